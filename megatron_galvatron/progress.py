"""Progress of a long tool run that shows in a terminal and in a log file alike: a tqdm bar on a
terminal, and elsewhere (a Slurm log, a pipe) a plain line every `interval_s` seconds and one at
the end, where a bar would be a single line rewritten with carriage returns."""
import sys
import time
from typing import Optional, TextIO


def _amount(n: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{n:,.0f} {unit}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n} {unit}"


class Progress:
    """update(n) as the work advances; use as a context manager (closing prints the last line)."""

    def __init__(self, total: float, desc: str, unit: str = "it", enabled: bool = True, unit_scale: bool = False,
                 file: Optional[TextIO] = None, interval_s: float = 30.0):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.file = file or sys.stderr
        self.enabled, self.interval_s = enabled, interval_s
        self.n = 0.0
        self._bar = None
        self._started = self._last = time.monotonic()
        if enabled and self.file.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, file=self.file)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval_s:
            self._line()

    def _line(self) -> None:
        self._last = now = time.monotonic()
        elapsed = now - self._started
        done = f"{_amount(self.n, self.unit, self.unit_scale)}"
        if self.total:
            frac = min(self.n / self.total, 1.0)
            eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
            done += f" of {_amount(self.total, self.unit, self.unit_scale)} ({frac:.0%}), ETA {eta:.0f} s"
        print(f"{self.desc}: {done}, {elapsed:.0f} s elapsed", file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            self._line()
        self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._bar is None:
            self.enabled = False  # the error is the last line, not a progress report
        self.close()
