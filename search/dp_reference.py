"""The stage dynamic program in plain numpy: the reference the C++ core is tested against.

Same recurrence as csrc/dp_core.cpp but with a full strategy-by-strategy transition matrix
(no layout grouping), so agreement between the two also checks the grouping shortcut. Also the
runtime fallback when the compiled extension is missing (slower, same answers).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

INF = float("inf")


def _check(intra, mem, trans, final):
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
    if final.shape != (S,):
        raise ValueError("final must have one cost per strategy")
    return intra, mem, trans, final


def solve_lengths(intra, mem, trans, budgets, final=None) -> List[Tuple[float, List[int], int]]:
    """For every prefix length n, the best assignment of the first n layers within budgets[n-1].

    intra[l, s], mem[l, s] (integer units), trans[s', s] between adjacent layers, final[s] after
    the last one. Returns [(cost, strategies, mem_left)], (inf, [], -1) where nothing fits.
    """
    intra, mem, trans, final = _check(intra, mem, trans, final)
    L, S = intra.shape
    budgets = np.asarray(budgets, dtype=np.int64)
    if budgets.shape != (L,):
        raise ValueError("budgets must hold one budget per prefix length")
    M = int(max(budgets.max(), 0))
    m_axis = np.arange(M + 1)[:, None]
    f = np.where(mem[0][None, :] <= m_axis, intra[0][None, :], INF)  # (M+1, S)
    tables, choices = [f], [None]
    for l in range(1, L):
        cand = f[:, :, None] + trans[None, :, :]            # (M+1, S', S)
        arg = np.argmin(cand, axis=1)                        # first s' on ties
        h = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :]
        rest = m_axis - mem[l][None, :]                      # (M+1, S)
        ok = rest >= 0
        picked = h[np.clip(rest, 0, M), np.arange(S)[None, :]]
        f = np.where(ok, intra[l][None, :] + picked, INF)
        tables.append(f)
        choices.append(arg)
    out = []
    for n in range(1, L + 1):
        b = int(budgets[n - 1])
        if b < 0:
            out.append((INF, [], -1))
            continue
        row = tables[n - 1][b]
        total = np.where(np.isfinite(row), row + final, INF)
        s = int(np.argmin(total))
        if not np.isfinite(total[s]):
            out.append((INF, [], -1))
            continue
        cost = float(total[s])
        strategies = [0] * n
        m, used = b, 0
        for l in range(n - 1, -1, -1):
            strategies[l] = s
            used += int(mem[l, s])
            if l == 0:
                break
            m -= int(mem[l, s])
            s = int(choices[l][m, s])
        out.append((cost, strategies, b - used))
    return out


def solve(intra, mem, trans, budget: int, final: Optional[np.ndarray] = None) -> Tuple[float, List[int], int]:
    """Cheapest strategy per layer with total memory <= budget: (cost, strategies, mem_left)."""
    L = np.asarray(intra).shape[0]
    if budget < 0:
        return INF, [], -1
    return solve_lengths(intra, mem, trans, np.full(L, budget), final)[-1]
