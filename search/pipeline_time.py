"""Iteration time of a pipeline, and the clock of a GPU that idles part of the step."""
from __future__ import annotations

from typing import List, Sequence, Tuple


def pipeline_iteration_time(stage_per_mb: List[float], stage_per_iter: List[float], chunks: int) -> float:
    pp = len(stage_per_mb)
    return (chunks + pp - 1) * max(stage_per_mb) + max(stage_per_iter)



def slowdown_at(u: float, sustained: float, curve: Sequence[Tuple[float, float]] = ()) -> float:
    """Slowdown of a GPU busy a fraction u of the time: piecewise linear through (0, 1), the
    profile's measured (duty, slowdown) points and (1, sustained); a straight line without them.
    The profile parser keeps the points within [1, sustained] and non-decreasing."""
    u = min(max(u, 0.0), 1.0)
    pts = [(0.0, 1.0)] + [p for p in curve if 0.0 < p[0] < 1.0] + [(1.0, sustained)]
    for (u0, s0), (u1, s1) in zip(pts, pts[1:]):
        if u <= u1:
            return s0 + (s1 - s0) * (u - u0) / (u1 - u0)
    return sustained


def clock_scales(per_mb: List[float], per_iter: List[float], compute_mb: List[float], busy_mb: List[float],
                 busy_iter: List[float], chunks: int, sustained: float,
                 curve: Sequence[Tuple[float, float]] = ()) -> Tuple[float, List[float]]:
    """(iteration time, per-stage compute scale) when the sustained slowdown `sustained` (compute
    tables are priced with it) applies according to how busy each stage's GPU is.

    A GPU at its power cap lowers its clock; one that idles part of the step (pipeline bubble,
    communication not hidden behind compute) draws less on average and keeps a higher clock. The
    slowdown of a stage busy a fraction u of the iteration is `slowdown_at(u)`: measured by the
    profiler at duty cycles below 1 where the profile has them (`curve`), else taken as
    1 + (sustained - 1) * u. u itself depends on the faster compute, so the two are iterated (a
    contraction: a few rounds)."""
    pp = len(per_mb)
    scale = [1.0] * pp
    it = pipeline_iteration_time(per_mb, per_iter, chunks)
    if sustained <= 1.0:
        return it, scale
    for _ in range(8):
        for i in range(pp):
            u = min(1.0, (chunks * (compute_mb[i] * scale[i] + busy_mb[i]) + busy_iter[i]) / it)
            scale[i] = slowdown_at(u, sustained, curve) / sustained
        new = pipeline_iteration_time([m - c * (1.0 - f) for m, c, f in zip(per_mb, compute_mb, scale)],
                                      per_iter, chunks)
        if abs(new - it) <= 1e-9 * it:
            break
        it = new
    return new, scale


def clock_gain_bound(sustained: float, chunks: int, pp_deg: int,
                     curve: Sequence[Tuple[float, float]] = ()) -> float:
    """Largest fraction of the iteration time `clock_scales` can take off a plan of this pipeline
    shape, for bounds that must stay below every plan's time.

    On a stage's critical path C = (chunks + pp - 1) x its compute per micro-batch runs at scale
    f = s(u) / S, so the gain is C (1 - f), while the stage is busy at least
    u >= a C f / T >= a C / (S T) with a = chunks / (chunks + pp - 1). With x = C / T in [0, 1]
    and s non-decreasing the gain is at most x (1 - s(a x / S) / S). For the straight line
    s(u) = 1 + (S - 1) u that is (S - 1)/S x (1 - a x / S): (S - 1) / (4 a) at x = S / (2 a) if
    that is <= 1, else (S - 1)/S (1 - a / S) at x = 1. For a measured curve it is bounded on a
    grid: on [x0, x1] the gain is at most x1 (1 - s(a x0 / S) / S)."""
    if sustained <= 1.0:
        return 0.0
    a = chunks / (chunks + pp_deg - 1)
    if curve:
        n = 2000
        return max((i + 1) / n * (1.0 - slowdown_at(a * i / n / sustained, sustained, curve) / sustained)
                   for i in range(n))
    if sustained / (2 * a) <= 1.0:
        return (sustained - 1.0) / (4 * a)
    return (sustained - 1.0) / sustained * (1.0 - a / sustained)

