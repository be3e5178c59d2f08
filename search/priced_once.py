"""Pricing each layer once per search: a part of CostModel (search/cost_model.py)."""
from __future__ import annotations

import contextlib


class PricedOnce:
    _memo = None

    @contextlib.contextmanager
    def memoised(self):
        """Within it, each layer's time and memory is priced once per (strategy, stage size,
        micro-batch): a search prices the same layers for many plans, and nothing they depend on
        changes while it runs (outside it every call prices afresh, so a changed setting counts)."""
        if self._memo is not None:
            yield self
            return
        self._memo = {}
        try:
            yield self
        finally:
            self._memo = None

    def _remembered(self, what: str, price, s, stage_world: int, global_micro_batch: int):
        if self._memo is None:
            return price(s, stage_world, global_micro_batch)
        key = (what, s, stage_world, global_micro_batch)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = price(s, stage_world, global_micro_batch)
        return hit
