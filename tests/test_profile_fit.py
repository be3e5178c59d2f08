"""The fits the profilers write, on synthetic points whose true line is known.

Timings measured on a shared 2-core CI machine are too noisy to hold a fit to 10% (a
descheduled process makes one point several times slower), so the 10% requirement is tested
here on synthetic points with realistic noise; tests/test_profile_tools.py checks the fits of
real measurements end to end with a looser bound. The piecewise (segment) fit is held to 10% on
every kept point of the committed real 2x H200 profiles as well.
"""
import copy
import json
import math
import os
import random

import pytest

from megatron_galvatron import profile_format as profiles
from megatron_galvatron.profiling import fit


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
    factor = profiles.bus_factor(op, n)
    pts = [[float(x), (lat + factor * x / (busbw * 1e9)) * (1 + rng.uniform(-0.04, 0.04))]
           for x in (2 ** k for k in range(20, 30))]
    e = fit.comm_entry(pts, factor)
    assert e["max_rel_error"] < 0.10
    for x, t in pts:  # priced the way the search prices it
        assert _rel(e["latency_s"] + factor * x / (e["bandwidth_GBps"] * 1e9), t) < 0.10
    assert _rel(e["bandwidth_GBps"], busbw) < 0.10
    assert len(e["segments"]) == 1  # one regime: nothing to split


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


# ------------------------------------------------------------------ piecewise fits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_PROFILES = [os.path.join(ROOT, "tests", "fixtures", "results", "h200x2_gpt1p4b", "validation_autocast_runtime",
                              "profile", "hardware.json"),
                 os.path.join(ROOT, "examples", "profiles", "h200x2_llama7b_seq2048", "hardware.json")]
MiB = 2 ** 20


def _priced(comm_fit, factor, nbytes):
    latency, bandwidth = comm_fit.line(nbytes)
    return latency + factor * nbytes / (bandwidth * 1e9)


def _entries(d):
    for op, table in d["collectives"].items():
        for key, e in table.items():
            n, layout = key.split("_")
            yield op, (int(n), layout), profiles.bus_factor(op, int(n)), e
    for key, e in d["p2p"].items():
        yield "p2p", int(key), 1.0, e


@pytest.mark.parametrize("path", REAL_PROFILES, ids=["h200x2_validate", "h200x2_llama7b"])
def test_segments_reproduce_every_real_point_within_10_percent(path):
    with open(path) as f:
        d = json.load(f)
    hw = profiles.parse_hardware(d, path)
    one_line_worst = 0.0
    for op, key, factor, e in _entries(d):
        comm_fit = hw.p2p[key] if op == "p2p" else hw.collectives[op][key]
        assert comm_fit.segments, f"{op} {key}: re-fit the file (python -m megatron_galvatron.profiling.fit)"
        for x, t in e["points"]:
            assert _rel(_priced(comm_fit, factor, x), t) < 0.10, (op, key, x)
            one_line_worst = max(one_line_worst, _rel(e["latency_s"] + factor * x / (e["bandwidth_GBps"] * 1e9), t))
        # the committed segments are what the kept points give today
        again = fit.fit_segments(e["points"], factor)
        assert len(again) == len(e["segments"])
        for a, b in zip(again, e["segments"]):
            assert (a["max_bytes"] is None) == (b["max_bytes"] is None)
            for k in ("max_bytes", "latency_s", "bandwidth_GBps"):
                if a[k] is not None:
                    assert a[k] == pytest.approx(b[k], rel=1e-6)
    assert one_line_worst > 0.14  # what one line per entry missed these points by


def test_two_regimes_are_split_where_the_protocol_changes():
    factor = profiles.bus_factor("all_reduce", 8)

    def t(x):  # a slower protocol below 8 MiB, as NCCL's
        return 8e-6 + factor * x / 80e9 if x < 8 * MiB else 30e-6 + factor * x / 300e9

    xs = [2 ** k for k in range(20, 30)]
    pts = [[float(x), t(x)] for x in xs]
    assert fit.comm_entry(pts, factor)["max_rel_error"] > 0.3  # no single line follows it
    lo, hi = fit.fit_segments(pts, factor)
    assert lo["latency_s"] == pytest.approx(8e-6) and lo["bandwidth_GBps"] == pytest.approx(80.0)
    assert hi["latency_s"] == pytest.approx(30e-6) and hi["bandwidth_GBps"] == pytest.approx(300.0)
    # the lines do not cross between 4 and 8 MiB: the bound is half way on a log scale
    assert lo["max_bytes"] == pytest.approx(math.sqrt(4 * MiB * 8 * MiB)) and hi["max_bytes"] is None

    rng = random.Random(3)
    noisy = [[x, y * (1 + rng.uniform(-0.03, 0.03))] for x, y in pts]
    segs = fit.fit_segments(noisy, factor)
    assert len(segs) == 2 and 4 * MiB <= segs[0]["max_bytes"] < 8 * MiB
    for x, y in noisy:
        seg = segs[0] if x <= segs[0]["max_bytes"] else segs[1]
        assert _rel(seg["latency_s"] + factor * x / (seg["bandwidth_GBps"] * 1e9), y) < 0.10


def test_segment_bound_is_where_the_lines_cross_between_the_points():
    def t(x):
        return 2e-6 + x / 50e9 if x < 8 * MiB else 100e-6 + x / 400e9

    lo, hi = fit.fit_segments([[float(x), t(x)] for x in (2 ** k for k in range(20, 30))], 1.0)
    # 2 us + x / 50 GB/s = 100 us + x / 400 GB/s at x = 98e-6 / (1 / 50e9 - 1 / 400e9) = 5.6e6 bytes
    assert lo["max_bytes"] == pytest.approx(5.6e6) and hi["max_bytes"] is None


def test_a_point_no_line_can_share_gets_a_segment_of_its_own():
    # the 1 MiB point is 2.7x the 2 MiB one (as reduce_scatter measured on H200): a line through it
    # and any larger size would have to slope down
    pts = [[float(x), 12e-6 + x / 250e9] for x in (2 ** k for k in range(20, 30))]
    pts[0][1] = 49e-6
    segs = fit.fit_segments(pts, 1.0)
    assert len(segs) == 2
    lone, rest = segs
    assert lone["bandwidth_GBps"] == pytest.approx(rest["bandwidth_GBps"])  # borrowed from its neighbour
    assert lone["latency_s"] + MiB / (lone["bandwidth_GBps"] * 1e9) == pytest.approx(49e-6)
    assert MiB <= lone["max_bytes"] < 2 * MiB
    assert rest["latency_s"] == pytest.approx(12e-6) and rest["bandwidth_GBps"] == pytest.approx(250.0)


def test_segments_keep_lines_physical():
    # falling and flat stretches: every segment keeps latency >= 0 and a finite positive bandwidth
    pts = [[4096.0, 1e-4], [8192.0, 0.9e-4], [16384.0, 1.1e-4], [32768.0, 3e-4], [65536.0, 2e-4]]
    segs = fit.fit_segments(pts, 1.0)
    for seg in segs:
        assert seg["latency_s"] >= 0 and 0 < seg["bandwidth_GBps"] < math.inf
    bounds = [seg["max_bytes"] for seg in segs[:-1]]
    assert bounds == sorted(bounds) and segs[-1]["max_bytes"] is None
    assert fit.fit_segments([[1e6, 2e-5]], 1.0)[0]["latency_s"] == 2e-5  # one point: a constant, as comm_entry


def test_refit_adds_segments_and_leaves_the_rest(tmp_path):
    with open(REAL_PROFILES[1]) as f:
        d = json.load(f)
    for _, _, _, e in _entries(d):
        del e["segments"]
    old = copy.deepcopy(d)
    path = tmp_path / "hardware.json"
    path.write_text(json.dumps(d, indent=1) + "\n")
    assert fit.main([str(path)]) == 0
    new = json.loads(path.read_text())
    for (_, _, factor, e), (_, _, _, before) in zip(_entries(new), _entries(old)):
        assert e.pop("segments") == fit.fit_segments(before["points"], factor)
    assert new == old
