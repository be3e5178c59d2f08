"""Command-line values checked as they are parsed: argparse `type=` functions that refuse what a
flag cannot mean (negative, zero, NaN, absurdly large, empty), and a parser whose errors are one
line, printed once per job, exit status 2."""
import argparse
import math
import sys

from megatron_galvatron.errors import report_error

MAX_INT = 2 ** 31 - 1  # what fits the int32 counters and numpy seeds downstream


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but an error is `prog: error: message` alone (usage is what -h is for), printed
    once per torchrun job (report_error): every rank parses the same flags and fails alike."""

    def error(self, message: str):
        report_error(self.prog, message)
        sys.exit(2)


def int_in(lo: int, hi: int = MAX_INT):
    """An integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text}")
        return v
    return parse


def within(v: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> bool:
    """v is finite and in [lo, hi], with either end open if asked."""
    return math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)


def interval(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    """A finite number in [lo, hi], with either end open if asked."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if not within(v, lo, hi, lo_open, hi_open):
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval(lo, hi, lo_open, hi_open)}, "
                                             f"got {text}")
        return v
    return parse


positive_int = int_in(1)
nonneg_int = int_in(0)
probability = float_in(0.0, 1.0, hi_open=True)  # dropout: 1 would drop everything
positive_float = float_in(0.0, math.inf, lo_open=True, hi_open=True)
nonneg_float = float_in(0.0, math.inf, hi_open=True)


def nonempty(text: str) -> str:
    """A path or name: an empty one would silently mean "not set"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: give a path, or leave the flag out")
    return text

