"""The stage dynamic program in plain numpy: the reference the C++ core is tested against.

Same recurrence as csrc/dp_core.cpp but with a full strategy-by-strategy transition matrix
(no layout grouping), so agreement between the two also checks the grouping shortcut. Also the
runtime fallback when the compiled extension is missing (slower, same answers).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

INF = float("inf")


def _check(intra, mem, trans, final, many_finals=False):
    intra = np.ascontiguousarray(intra, dtype=np.float64)
    mem = np.ascontiguousarray(mem, dtype=np.int64)
    trans = np.ascontiguousarray(trans, dtype=np.float64)
    if intra.ndim != 2 or mem.shape != intra.shape:
        raise ValueError("intra and mem must be 2-D arrays of the same shape (layers, strategies)")
    L, S = intra.shape
    if L < 1 or S < 1:
        raise ValueError("need at least one layer and one strategy")
    if trans.shape != (S, S):
        raise ValueError("trans must have shape (strategies, strategies)")
    if (mem < 0).any():
        raise ValueError("mem must be non-negative")
    final = np.zeros(S) if final is None else np.ascontiguousarray(final, dtype=np.float64)
    if final.shape != (S,) and not (many_finals and final.ndim == 2 and final.shape[1] == S):
        raise ValueError("final must have one cost per strategy")
    return intra, mem, trans, final


def _forward(intra, mem, trans, M):
    """f[l] of shape (M+1, S) for every layer, and the argmin predecessor of every state."""
    L, S = intra.shape
    m_axis = np.arange(M + 1)[:, None]
    f = np.where(mem[0][None, :] <= m_axis, intra[0][None, :], INF)
    tables, choices = [f], [None]
    for l in range(1, L):
        cand = f[:, :, None] + trans[None, :, :]            # (M+1, S', S)
        arg = np.argmin(cand, axis=1)                        # first s' on ties
        h = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :]
        rest = m_axis - mem[l][None, :]
        picked = h[np.clip(rest, 0, M), np.arange(S)[None, :]]
        f = np.where(rest >= 0, intra[l][None, :] + picked, INF)
        tables.append(f)
        choices.append(arg)
    return tables, choices


def solve(intra, mem, trans, budget: int, final: Optional[np.ndarray] = None) -> Tuple[float, List[int], int]:
    """Cheapest strategy per layer with total memory <= budget: (cost, strategies, mem_left).

    intra[l, s], mem[l, s] (integer units), trans[s', s] between adjacent layers, final[s] after
    the last one; (inf, [], -1) when nothing fits.
    """
    intra, mem, trans, final = _check(intra, mem, trans, final)
    if budget < 0:
        return INF, [], -1
    L = intra.shape[0]
    tables, choices = _forward(intra, mem, trans, int(budget))
    row = tables[-1][budget]
    total = np.where(np.isfinite(row), row + final, INF)
    s = int(np.argmin(total))
    if not np.isfinite(total[s]):
        return INF, [], -1
    cost = float(total[s])
    strategies, m, used = [0] * L, int(budget), 0
    for l in range(L - 1, -1, -1):
        strategies[l] = s
        used += int(mem[l, s])
        if l == 0:
            break
        m -= int(mem[l, s])
        s = int(choices[l][m, s])
    return cost, strategies, int(budget) - used


def cost_table(intra, mem, trans, budget: int, final: Optional[np.ndarray] = None) -> np.ndarray:
    """table[n-1, m] = solve(first n layers, budget m)[0] for every n and m <= budget; with a 2-D
    final (F, S), one table per row, shape (F, L, budget + 1)."""
    intra, mem, trans, final = _check(intra, mem, trans, final, many_finals=True)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    tables, _ = _forward(intra, mem, trans, int(budget))

    def one(fin):
        return np.stack([np.where(np.isfinite(f), f + fin[None, :], INF).min(axis=1) for f in tables])
    return one(final) if final.ndim == 1 else np.stack([one(fin) for fin in final])
