"""Bounds the search prunes candidates with: the memory-aware throughput bound (the linear
relaxation of the stage DPs) and the fewest bytes a stage can need. A part of Searcher
(search/engine.py), which provides the tables, the stage frames, the budget and the caches."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Tuple

import numpy as np

from search.stage_dp import Table, lp_bound, min_max_partition
from search.stage_memory import InFlight

if TYPE_CHECKING:
    from search.engine import Candidate, StageFrame


class StageBounds:
    def memory_aware_bound(self, cand: Candidate, frames: List[StageFrame]) -> float:
        """Iteration time bound that respects memory (see lp_bound); inf when nothing can fit."""
        t = self.table(self.num_gpus // cand.pp, cand.global_micro_batch)
        L, k = self.model.num_layers, cand.k
        n_hi = self.n_max(cand.pp)
        n = np.arange(1, n_hi + 1)
        obj = k * t.per_mb + t.per_iter
        arrays = []
        for f in frames:
            key = ("lp", id(t), k, f.flight, f.vocab_budgeted, f.vocab_transient, n_hi)
            arr = self._bounds.get(key)
            if arr is None:
                floor = np.maximum(t.transient, f.vocab_transient).min()
                room = np.full(n_hi, self.budget - f.vocab_budgeted - floor)
                arr = self._bounds[key] = lp_bound(obj, t.budgeted(f.flight), n, room)
            arrays.append(arr + k * f.fixed_mb + f.fixed_iter)
        if cand.pp == 1:
            return float(arrays[0][L - 1])
        split = min_max_partition(arrays, L)
        return math.inf if split is None else float(max(arrays[i][m - 1] for i, m in enumerate(split)))

    def min_memory_levels(self, table: Table, flight: InFlight, vocab_transient: float, n_hi: int,
                          bf16_layers: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """For n = 1..n_hi alike layers: the fewest bytes they need (persistent memory plus the
        transient reservation), and the reservation level that achieves it (the higher on ties).
        `bf16_layers` of them (at most n) may not take an fp8 strategy."""
        key = ("minmem", id(table), flight, vocab_transient, n_hi, bf16_layers)
        hit = self._bounds.get(key)
        if hit is None:
            reserve = np.maximum(table.transient, vocab_transient)
            order = np.argsort(reserve, kind="stable")
            r = reserve[order]
            budgeted = table.budgeted(flight)[order]
            m = np.minimum.accumulate(budgeted)
            last = np.concatenate((np.nonzero(np.diff(r))[0], [len(r) - 1]))
            levels, floor = r[last][::-1], m[last][::-1]
            n = np.arange(1, n_hi + 1)
            fixed = np.minimum(n, bf16_layers)
            # inf at levels that admit no bf16 strategy: those layers cannot be placed there
            bf16 = (np.minimum.accumulate(np.where(table.fp8[order], np.inf, budgeted))[last][::-1]
                    if bf16_layers else floor)
            need = (n - fixed)[None, :] * floor[:, None] + fixed[None, :] * bf16[:, None] + levels[:, None]
            pick = need.argmin(axis=0)
            hit = self._bounds[key] = (need[pick, np.arange(n_hi)], levels[pick])
        return hit

    def stage_min_memory(self, table: Table, frame: StageFrame, n_hi: int) -> np.ndarray:
        """Smallest allocated bytes of the stage with n = 1..n_hi layers."""
        return (self.min_memory_levels(table, frame.flight, frame.vocab_transient, n_hi, self._bf16_layers(frame))[0]
                + frame.vocab_budgeted)

    def _bf16_layers(self, frame: StageFrame) -> int:
        """How many of the stage's layers --fp8-skip-first/last keep in bf16 (the first stage
        holds the model's first layers, the last stage its last ones)."""
        first, last = self.fp8_skip
        return (first if frame.in_layout is not None else 0) + (last if frame.out_layout is not None else 0)

    def _fewest_layers(self, frame: StageFrame) -> int:
        """A first (last) stage holds every layer --fp8-skip-first (--fp8-skip-last) keeps in bf16,
        so that no other stage has to know where it starts."""
        return max(1, self._bf16_layers(frame))

    def min_memory(self, cand: Candidate, frames: List[StageFrame]) -> float:
        t = self.table(self.num_gpus // cand.pp, cand.global_micro_batch)
        L = self.model.num_layers
        if cand.pp == 1:
            return float(self.stage_min_memory(t, frames[0], L)[-1])
        n_hi = self.n_max(cand.pp)
        per_stage = [self.stage_min_memory(t, f, n_hi) for f in frames]
        split = self.partition(per_stage, frames)
        if split is None:
            return math.inf
        return max(per_stage[i][n - 1] for i, n in enumerate(split))
