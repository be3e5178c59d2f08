"""Straight-line fits y = intercept + slope * x with the measured points kept beside them.

Points span orders of magnitude (1 MiB .. 512 MiB, one sample .. many), so plain least
squares would let the largest point decide everything and leave the small ones tens of
percent off. Minimising the relative residual (each point weighted by 1 / y^2) keeps every
point close, which is what the cost model needs when it prices small and large messages alike.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np


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


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' bus bandwidth factor: bytes each link carries per byte of the full buffer."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


def comm_entry(points: List[List[float]], factor: float = 1.0) -> Dict:
    """Fit [bytes, seconds] points as latency + factor * bytes / bandwidth.

    `factor` is the bus factor for collectives (bandwidth is then bus bandwidth) and 1 for p2p.
    """
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    latency, slope = fit_line(xs, ys)
    if slope <= 0:
        # Flat within noise (latency-bound sizes only): the bandwidth cannot be resolved. Take the
        # lowest one that keeps the largest message under the slowest point, so that the cost
        # model errs towards slow links rather than free ones.
        slope = max((max(ys) - latency) / max(xs), 1e-300)
    return {"latency_s": latency, "bandwidth_GBps": factor / slope / 1e9,
            "max_rel_error": max_relative_error(xs, ys, latency, slope),
            "points": [[float(x), float(y)] for x, y in zip(xs, ys)]}


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
