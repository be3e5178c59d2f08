"""Straight-line fits y = intercept + slope * x with the measured points kept beside them.

Points span orders of magnitude (1 MiB .. 512 MiB, one sample .. many), so plain least
squares would let the largest point decide everything and leave the small ones tens of
percent off. Minimising the relative residual (each point weighted by 1 / y^2) keeps every
point close, which is what the cost model needs when it prices small and large messages alike.

NCCL's time is not one line over that range (it changes protocol and algorithm between about 1
and 8 MiB), so communication entries also carry a piecewise fit (`fit_segments`) that holds
every measured point within SEGMENT_TOLERANCE; the single line stays for readers that only know it.
"""
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_galvatron.errors import exit_on_user_error
from megatron_galvatron.flag_types import ArgumentParser
from megatron_galvatron.profile_format import bus_factor, parse_hardware, read_json, write_hardware


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Tuple[float, float]:
    """(intercept, slope) with intercept >= 0 and slope >= 0, minimising the relative error.

    A negative intercept (noise on latency-free points) or slope (noise on flat points) is
    physically meaningless; the fit is then redone with that term pinned at zero.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no points to fit")
    w = 1.0 / np.maximum(np.abs(y), 1e-30)
    if x.size >= 2 and np.ptp(x) > 0:
        a = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
        (intercept, slope), *_ = np.linalg.lstsq(a, y * w, rcond=None)
        if intercept >= 0 and slope >= 0:
            return float(intercept), float(slope)
        if intercept < 0:
            slope = _through_origin(x, y, w)
            if slope > 0:
                return 0.0, slope
    # flat or a single size: a constant (the weighted mean) is all the data supports
    return float(np.sum(w * w * y) / np.sum(w * w)), 0.0


def _through_origin(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    xw = x * w
    return float(np.dot(xw, y * w) / max(np.dot(xw, xw), 1e-300))


def max_relative_error(xs: Sequence[float], ys: Sequence[float], intercept: float, slope: float) -> float:
    return max(abs(intercept + slope * x - y) / abs(y) for x, y in zip(xs, ys) if y != 0)


def comm_entry(points: List[List[float]], factor: float = 1.0) -> Dict:
    """Fit [bytes, seconds] points as latency + factor * bytes / bandwidth.

    `factor` is the bus factor for collectives (bandwidth is then bus bandwidth) and 1 for p2p.
    """
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    latency, slope = _comm_line(xs, ys)
    return {"latency_s": latency, "bandwidth_GBps": factor / slope / 1e9,
            "max_rel_error": max_relative_error(xs, ys, latency, slope),
            "points": [[float(x), float(y)] for x, y in zip(xs, ys)],
            "segments": fit_segments(points, factor)}


def _comm_line(xs: Sequence[float], ys: Sequence[float]) -> Tuple[float, float]:
    latency, slope = fit_line(xs, ys)
    if slope <= 0:
        # Flat within noise (latency-bound sizes only): the bandwidth cannot be resolved. Take the
        # lowest one that keeps the largest message under the slowest point, so that the cost
        # model errs towards slow links rather than free ones.
        slope = max((max(ys) - latency) / max(xs), 1e-300)
    return latency, slope


SEGMENT_TOLERANCE = 0.10


def fit_segments(points: List[List[float]], factor: float = 1.0,
                 tolerance: float = SEGMENT_TOLERANCE) -> List[Dict]:
    """Piecewise `latency + factor * bytes / bandwidth` over contiguous size ranges.

    The fewest segments that keep every point within `tolerance` of its own segment's line,
    each line fitted as `comm_entry` fits the whole sweep. A segment of one point leaves latency
    and bandwidth undetermined, so one is used only where a point fits no line with a neighbour
    (a size whose time falls as the size grows); among equally good splits the smallest worst
    error wins. A lone point always fits, so the tolerance is met unless one size was measured
    more than once with times further apart than it.

    Each segment prices sizes up to `max_bytes` (None for the last): where the two lines of
    neighbouring segments cross between their points, so that the time stays continuous in the
    size, else half way between the points on a log scale. Sizes outside the measured range get
    the nearest segment's line.
    """
    pts = sorted((float(x), float(y)) for x, y in points)
    if not pts:
        return []
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    n = len(pts)
    lines: Dict[Tuple[int, int], Tuple[float, float, float]] = {}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = _comm_line(xs[i:j + 1], ys[i:j + 1])
            lines[(i, j)] = (a, b, max_relative_error(xs[i:j + 1], ys[i:j + 1], a, b))
    # best[j]: the best key over points [0, j) and where its last segment starts. The key is
    # (segments over the tolerance, lone points, segments, worst error); appending a segment only
    # ever raises each part, so the best split of a prefix extends to the best split of the whole.
    best: List[Optional[Tuple[Tuple[int, int, int, float], int]]] = [None] * (n + 1)
    best[0] = ((0, 0, 0, 0.0), -1)
    for j in range(1, n + 1):
        for i in range(j):
            if best[i] is None or (i > 0 and xs[i - 1] == xs[i]):
                continue  # repeats of a size must share a line, or pricing that size would be ambiguous
            (over, lone, segs, worst), _ = best[i]
            err = 0.0 if j - i == 1 else lines[(i, j - 1)][2]
            key = (over + (err > tolerance), lone + (j - i == 1), segs + 1, max(worst, err))
            if best[j] is None or key < best[j][0]:
                best[j] = (key, i)
    bounds, j = [], n
    while j > 0:
        i = best[j][1]
        bounds.append((i, j - 1))
        j = i
    bounds.reverse()
    fitted: List[Optional[Tuple[float, float]]] = [lines[(i, j)][:2] if j > i else None for i, j in bounds]
    for k, (i, j) in enumerate(bounds):
        if fitted[k] is None:
            fitted[k] = _lone_line(xs[i], ys[i], fitted, k)
    out = []
    for k, ((i, j), (a, b)) in enumerate(zip(bounds, fitted)):
        top = None if k + 1 == len(bounds) else _boundary(xs[j], xs[j + 1], (a, b), fitted[k + 1])
        out.append(_segment(top, a, b, factor, max_relative_error(xs[i:j + 1], ys[i:j + 1], a, b)))
    return out


def _lone_line(x: float, y: float, fitted: List[Optional[Tuple[float, float]]], k: int) -> Tuple[float, float]:
    """A line through one point: the bandwidth of a neighbouring segment (the larger sizes' first,
    as those are measured more steadily), the latency making up the rest of the point's time."""
    for other in (fitted[k + 1] if k + 1 < len(fitted) else None, fitted[k - 1] if k > 0 else None):
        if other is not None and other[1] * x <= y:
            return y - other[1] * x, other[1]
    if len(fitted) == 1 or x <= 0:
        return y, 1e-300  # nothing to borrow from: a constant, as comm_entry fits a single point
    return 0.0, y / x  # faster than a neighbour's bandwidth allows: all of it is transfer


def _boundary(x_lo: float, x_hi: float, lo: Tuple[float, float], hi: Tuple[float, float]) -> float:
    if lo[1] != hi[1]:
        cross = (hi[0] - lo[0]) / (lo[1] - hi[1])
        if x_lo <= cross < x_hi:
            return cross
    return math.sqrt(x_lo * x_hi) if x_lo > 0 else 0.5 * (x_lo + x_hi)


def _segment(max_bytes: Optional[float], latency: float, slope: float, factor: float, err: float) -> Dict:
    return {"max_bytes": None if max_bytes is None else float(max_bytes), "latency_s": float(latency),
            "bandwidth_GBps": factor / max(slope, 1e-300) / 1e9, "max_rel_error": float(err)}


def refit_hardware(profile: Dict) -> Dict:
    """Recompute `segments` of every collective and p2p entry of a hardware profile from its kept
    points, in place (entries without points are left as they are); returns the profile."""
    for op, table in profile.get("collectives", {}).items():
        for key, entry in table.items():
            if entry.get("points"):
                entry["segments"] = fit_segments(entry["points"], bus_factor(op, int(key.split("_")[0])))
    for entry in profile.get("p2p", {}).values():
        if entry.get("points"):
            entry["segments"] = fit_segments(entry["points"], 1.0)
    return profile


def refit_file(path: str) -> Dict:
    """Add or recompute `segments` in a hardware.json file, keeping everything else as it was."""
    profile = read_json(path, "hardware", "give a hardware.json that tools/profile_comm.py wrote")
    parse_hardware(profile, path)  # a malformed file is one line, before anything is refitted
    refit_hardware(profile)
    write_hardware(profile, os.path.dirname(path) or ".", os.path.basename(path))
    return profile


def time_entry(points: List[List[float]]) -> Dict:
    """Fit [micro_batch, seq_length, seconds] points as intercept + per_token * (micro_batch * seq)."""
    xs = [p[0] * p[1] for p in points]
    ys = [p[2] for p in points]
    intercept, slope = fit_line(xs, ys)
    return {"intercept_s": intercept, "per_token_s": slope,
            "max_rel_error": max_relative_error(xs, ys, intercept, slope),
            "points": [[int(p[0]), int(p[1]), float(p[2])] for p in points]}


def bytes_per_token(points: List[List[float]]) -> Tuple[float, float]:
    """(bytes per token, constant bytes) from [micro_batch, seq_length, bytes] points.

    The slope over the token count is what grows with the batch; the constant part (bf16 weight
    copies autocast keeps for backward, RNG states) is kept separately and is not per token.
    """
    xs = [p[0] * p[1] for p in points]
    ys = [p[2] for p in points]
    if len(set(xs)) < 2:
        return ys[0] / xs[0], 0.0
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return round(max(float(slope), 0.0), 3), round(float(intercept), 3)  # beyond a milli-byte is float noise


def fit_nonneg(columns: Sequence[Sequence[float]], ys: Sequence[float], relative: bool = True) -> List[float]:
    """Coefficients c >= 0 of y = sum_k c_k * columns[k], least squares (each point weighted by
    1 / y with `relative`, as fit_line weights its points).

    Few columns, so every subset of them is solved and the best whose coefficients are all
    non-negative kept: exact on exact data, and no optimiser library needed. A term the points
    cannot resolve (rank-deficient subset) is left at zero."""
    a = np.asarray(columns, dtype=np.float64).T
    y = np.asarray(ys, dtype=np.float64)
    w = 1.0 / np.maximum(np.abs(y), 1e-30) if relative else np.ones_like(y)
    k = a.shape[1]
    best, best_err = [0.0] * k, float(np.sum((w * y) ** 2))
    for mask in range(1, 2 ** k):
        cols = [j for j in range(k) if mask >> j & 1]
        sub = a[:, cols] * w[:, None]
        if np.linalg.matrix_rank(sub) < len(cols):
            continue
        coef, *_ = np.linalg.lstsq(sub, y * w, rcond=None)
        if np.any(coef < 0):
            continue
        full = [0.0] * k
        for j, c in zip(cols, coef):
            full[j] = float(c)
        err = float(np.sum((w * (a @ np.asarray(full) - y)) ** 2))
        if err < best_err * (1 - 1e-12):  # ties go to the fewer terms, found first
            best, best_err = full, err
    return best


def _seq_columns(points: List[List[float]]) -> List[List[float]]:
    """[micro_batch, seq, y] points -> the columns 1, micro_batch * seq, micro_batch * seq^2."""
    return [[1.0] * len(points), [p[0] * p[1] for p in points], [p[0] * p[1] * p[1] for p in points]]


def seq_time_entry(points: List[List[float]]) -> Dict:
    """Fit [micro_batch, seq, seconds] points as intercept_s + micro_batch * (linear_s * seq + quadratic_s * seq^2).

    Per sample, the layer's matmuls and elementwise work grow with the sequence and attention's
    scores and weighted values with its square, so the time per token is linear_s + quadratic_s * seq."""
    c, lin, quad = fit_nonneg(_seq_columns(points), [p[2] for p in points])
    err = max((abs(c + p[0] * (lin * p[1] + quad * p[1] ** 2) - p[2]) / p[2] for p in points if p[2]), default=0.0)
    return {"intercept_s": c, "linear_s": lin, "quadratic_s": quad, "max_rel_error": err}


def seq_bytes_entry(points: List[List[float]]) -> Dict:
    """Fit [micro_batch, seq, bytes] points as constant_bytes + position_bytes * seq + micro_batch *
    (linear_bytes * seq + quadratic_bytes * seq^2). A kernel that keeps attention's score matrix
    for backward (the math path) saves per sample a multiple of seq^2; flash and memory-efficient
    SDPA keep none, and the fit then finds quadratic_bytes = 0. position_bytes is what is kept per
    position whatever the micro-batch (under autocast, a cast of the RoPE tables)."""
    cols = _seq_columns(points)
    c, pos, lin, quad = fit_nonneg([cols[0], [float(p[1]) for p in points]] + cols[1:], [p[2] for p in points],
                                   relative=False)
    return {"constant_bytes": round(c, 3), "position_bytes": round(pos, 3), "linear_bytes": round(lin, 3),
            "quadratic_bytes": round(quad, 6)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    prog = "python -m megatron_galvatron.profiling.fit"
    ap = ArgumentParser(prog=prog, description="Re-fit the piecewise communication segments of hardware.json "
                                               "files from the points they keep, in place.")
    ap.add_argument("paths", nargs="+", metavar="HARDWARE_JSON")
    args = ap.parse_args(argv)
    for path in args.paths:
        with exit_on_user_error(prog):
            profile = refit_file(path)
        rows = [(op, key, e) for op, t in profile["collectives"].items() for key, e in t.items()]
        rows += [("p2p", key, e) for key, e in profile["p2p"].items()]
        for op, key, e in rows:
            if "segments" in e:
                worst = max(s["max_rel_error"] for s in e["segments"])
                print(f"{path}: {op} {key}: {len(e['segments'])} segment(s), worst point {worst:.1%} "
                      f"(one line: {e.get('max_rel_error', float('nan')):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
