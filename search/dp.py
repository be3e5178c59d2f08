"""Entry point to the stage dynamic program: the compiled core, or the numpy reference if it is missing."""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import numpy as np

from search import dp_reference

try:
    from search import _dp_core
except ImportError:  # not built: `pip install -e .` compiles it
    _dp_core = None

_warned = False


def have_core() -> bool:
    return _dp_core is not None


def _fallback_warning() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("search._dp_core is not built (run `pip install -e .`); using the numpy reference DP, "
                      "which is much slower", RuntimeWarning, stacklevel=3)


def cost_table(intra: np.ndarray, mem: np.ndarray, group: np.ndarray, group_trans: np.ndarray, budget: int,
               final: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(table, choices): table[n-1, m] is the cheapest cost of the first n layers within memory m
    (see csrc/dp_core.cpp); choices let `backtrack` answer `solve` on any prefix and budget
    without another pass (None without the compiled core: `backtrack` then solves)."""
    group = np.ascontiguousarray(group, dtype=np.int32)
    if _dp_core is not None:
        return _dp_core.cost_table(intra, mem, group, group_trans, int(budget), final, keep_choices=True)
    _fallback_warning()
    return dp_reference.cost_table(intra, mem, np.asarray(group_trans, dtype=np.float64)[group][:, group],
                                   int(budget), final), None


def backtrack(choices: Optional[np.ndarray], intra: np.ndarray, mem: np.ndarray, group: np.ndarray,
              group_trans: np.ndarray, n: int, budget: int, final: Optional[np.ndarray] = None
              ) -> Tuple[float, List[int], int]:
    """solve(intra[:n], mem[:n], group, group_trans, budget, final), from cost_table's choices."""
    if choices is None or _dp_core is None:
        return solve(intra[:n], mem[:n], group, group_trans, budget, final)
    group = np.ascontiguousarray(group, dtype=np.int32)
    return _dp_core.backtrack(choices, intra, mem, group, group_trans, int(n), int(budget), final)


def solve(intra: np.ndarray, mem: np.ndarray, group: np.ndarray, group_trans: np.ndarray, budget: int,
          final: Optional[np.ndarray] = None) -> Tuple[float, List[int], int]:
    """Cheapest strategy per layer within `budget`: (cost, strategies, mem_left) (see csrc/dp_core.cpp)."""
    group = np.ascontiguousarray(group, dtype=np.int32)
    if _dp_core is not None:
        return _dp_core.solve(intra, mem, group, group_trans, int(budget), final)
    _fallback_warning()
    return dp_reference.solve(intra, mem, np.asarray(group_trans, dtype=np.float64)[group][:, group],
                              int(budget), final)
