"""The cost model of the runtime that measured the older validation runs, for re-pricing them.

That runtime ran replicated units (ddp, or dp = 1) on fp32 weights under bf16 autocast: fp32
norms and residual stream, a bf16 copy of every weight kept by each forward, no bf16 master
copy; and its first version did not prefetch ZeRO layers' parameters. search.cost_model prices
today's runtime; this states the difference in the three places it shows.
"""
from search.cost_model import CostModel
from search.stage_memory import is_sharded


class EarlierRuntimeCostModel(CostModel):
    def __init__(self, *args, prefetch: bool = True):
        super().__init__(*args)
        self.prefetch = prefetch

    def bf16_unit(self, dp_type: str, dp: int) -> bool:
        return is_sharded(dp_type, dp)

    def has_compute_copy(self, dp_type: str, dp: int) -> bool:
        return False

    def prefetches_zero_gathers(self) -> bool:
        return self.prefetch
