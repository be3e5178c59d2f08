"""The fits the profilers write, on synthetic points whose true line is known.

Timings measured on a shared 2-core CI machine are too noisy to hold a fit to 10% (a
descheduled process makes one point several times slower), so the 10% requirement is tested
here on synthetic points with realistic noise; tests/test_profile_tools.py checks the fits of
real measurements end to end with a looser bound.
"""
import random

import pytest

from megatron_galvatron.profiling import fit, hardware
from search import comm as search_comm
from search import profiles


def _rel(a, b):
    return abs(a - b) / abs(b)


def test_exact_line_is_recovered():
    xs = [2 ** k for k in range(20, 30)]
    ys = [15e-6 + x / 300e9 for x in xs]
    a, b = fit.fit_line(xs, ys)
    assert _rel(a, 15e-6) < 1e-6 and _rel(b, 1 / 300e9) < 1e-6


@pytest.mark.parametrize("op,n", [("all_reduce", 8), ("all_gather", 4), ("reduce_scatter", 2), ("all_to_all", 8)])
def test_comm_fit_reproduces_noisy_points_within_10_percent(op, n):
    rng = random.Random(n)
    busbw, lat = 180.0, 20e-6
    factor = fit.bus_factor(op, n)
    pts = [[float(x), (lat + factor * x / (busbw * 1e9)) * (1 + rng.uniform(-0.04, 0.04))]
           for x in (2 ** k for k in range(20, 30))]
    e = fit.comm_entry(pts, factor)
    assert e["max_rel_error"] < 0.10
    for x, t in pts:  # priced the way the search prices it
        assert _rel(e["latency_s"] + factor * x / (e["bandwidth_GBps"] * 1e9), t) < 0.10
    assert _rel(e["bandwidth_GBps"], busbw) < 0.10


def test_relative_fit_keeps_small_messages_close():
    # plain least squares would be decided by the 512 MiB point and miss 1 MiB by far
    xs = [2 ** k for k in range(20, 30)]
    ys = [30e-6 + x / 100e9 for x in xs]
    ys[-1] *= 1.05
    a, b = fit.fit_line(xs, ys)
    assert _rel(a + b * xs[0], ys[0]) < 0.10


def test_time_fit_linear_in_tokens():
    rng = random.Random(0)
    pts = [[mb, seq, (2e-4 + 3e-8 * mb * seq) * (1 + rng.uniform(-0.03, 0.03))]
           for mb in (1, 2, 4, 8) for seq in (1024, 2048)]
    e = fit.time_entry(pts)
    assert e["max_rel_error"] < 0.10
    for mb, seq, t in pts:
        assert _rel(e["intercept_s"] + e["per_token_s"] * mb * seq, t) < 0.10
    assert _rel(e["per_token_s"], 3e-8) < 0.10


def test_fit_never_negative():
    # noise that tilts the line below zero at x=0, and flat points
    a, b = fit.fit_line([1, 2, 4, 8], [0.9, 2.1, 4.4, 8.0])
    assert a >= 0 and b > 0
    e = fit.comm_entry([[4096.0, 1e-4], [8192.0, 0.9e-4], [16384.0, 1.1e-4]], 1.0)
    assert e["latency_s"] >= 0 and e["bandwidth_GBps"] > 0
    # flat points: the bandwidth the entry implies keeps the largest size under the slowest point
    assert e["latency_s"] + 16384 / (e["bandwidth_GBps"] * 1e9) <= 1.1e-4 * (1 + 1e-9)


def test_bytes_per_token_separates_constant_part():
    per_tok, const = fit.bytes_per_token([[mb, 128, 1000 + 24 * mb * 128] for mb in (1, 2, 4)])
    assert per_tok == pytest.approx(24) and const == pytest.approx(1000)


def test_constants_match_the_search():
    assert hardware.HARDWARE_SCHEMA == profiles.HARDWARE_SCHEMA
    assert hardware.MODEL_SCHEMA == profiles.MODEL_SCHEMA
    assert (hardware.HARDWARE_FILE, hardware.MODEL_FILE) == (profiles.HARDWARE_FILE, profiles.MODEL_FILE)
    for op in profiles.COLLECTIVES:
        for n in (1, 2, 3, 8):
            assert fit.bus_factor(op, n) == search_comm.bus_factor(op, n)
