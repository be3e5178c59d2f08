"""Memory-bound passes over a unit's parameters and gradients, priced at the bandwidth the
profiled AdamW step reached, and which units make which passes."""
from __future__ import annotations

from typing import Optional, Tuple

from megatron_galvatron.profile_format import ModelProfile
from search.stage_memory import is_sharded

# Bytes per parameter that a fused AdamW step moves: reads parameter, gradient, m, v; writes
# parameter, m, v. The per-iteration gradient passes are priced at the step's measured bandwidth.
ADAM_STEP_BYTES = 28
# Gradient clipping reads every local fp32 gradient for the norm and again to scale it in place.
CLIP_BYTES = 12
# A replicated unit zeroes its flat fp32 gradient buffer at the start of every step (a sharded
# unit drops its gradients instead).
ZERO_GRAD_BYTES = 4
# With bf16 compute a replicated unit refreshes its bf16 weight copy from the fp32 master once
# per step: read 4 bytes, write 2.
COMPUTE_COPY_BYTES = 6
# FSDP2 on the compute stream, per parameter of a sharded unit: copying each all-gather's output
# into the unsharded bf16 parameters (read 2, write 2); folding a micro-batch's bf16 gradient
# into the fp32 gradient it accumulates without sync (read 2 + 4, write 4).
GATHER_COPY_OUT_BYTES = 4
ACCUMULATE_BYTES = 10
# A replicated unit computing on its bf16 weight copy folds every micro-batch's bf16 gradient into
# the fp32 main gradient (read 2 + 4, write 4 bytes per parameter); its profiled backward, a bf16
# module whose gradient accumulates in place across repeats, moved 6 of those (read 2 + 2, write 2).
FOLD_EXTRA_BYTES = 4
# FSDP2 on its all-gather and reduce-scatter streams, beside the compute: per gather, casting
# the local fp32 shards into one bf16 buffer (read 4, write 2 per local parameter) and copying
# that into the all-gather's input (read 2, write 2); per reduce-scatter, casting the bf16
# gradient into the fp32 reduce-scatter input (read 2, write 4 per parameter). They draw on the
# memory bandwidth the compute stream's kernels use, so they count as its time.
GATHER_COPY_IN_BYTES = 10
REDUCE_COPY_IN_BYTES = 6


class MemoryPasses:
    """The memory-bound part of the cost model (CostModel is one): needs the model profile."""

    profile: ModelProfile

    def bf16_unit(self, dp_type: str, dp: int) -> bool:
        """Whether a unit computes on bf16 weights without autocast (bf16 residual stream): every
        unit does, FSDP units on their gathered weights, replicated ones on a bf16 copy."""
        return True

    def has_compute_copy(self, dp_type: str, dp: int) -> bool:
        """Whether a unit keeps a bf16 copy of its fp32 masters: the replicated ones."""
        return not is_sharded(dp_type, dp)

    def memory_pass(self, params: float, nbytes: float) -> float:
        """A memory-bound pass moving `nbytes` per parameter, at the AdamW step's bandwidth."""
        return self.profile.step_s_per_param * params * nbytes / ADAM_STEP_BYTES

    def fsdp_passes(self, dp_type: str, params: float, dp: int, gathers: Optional[int] = None,
                    reduces: int = 1) -> Tuple[float, float]:
        """(per micro-batch, per iteration) seconds of FSDP2's memory passes for a sharded unit
        holding `params` unsharded: each gather's copy-in (on the all-gather stream) and copy-out,
        each reduce-scatter's copy-in and, for ZeRO-2, the fp32 gradient accumulation. A layer
        gathers once per micro-batch under ZeRO-2, twice (forward, backward) under ZeRO-3 (the
        default; a vocab unit passes its own count) and reduce-scatters `reduces`
        times: every micro-batch under ZeRO-3, on the last one under ZeRO-2. The accumulation is
        priced on every micro-batch and taken back once per iteration, which is exact for a single
        micro-batch (it reduce-scatters its bf16 gradient directly). With more, the first
        micro-batch's cast into the fp32 gradient (read 2, write 4 bytes) goes uncounted; counting
        it per micro-batch would over-price every single-micro-batch ZeRO-2 plan instead, as the
        stage tables do not know the micro-batch count."""
        if not is_sharded(dp_type, dp):
            return 0.0, 0.0
        if gathers is None:
            gathers = 2 if dp_type == "zero3" else 1
        per_mb = self.memory_pass(params, gathers * (GATHER_COPY_OUT_BYTES + GATHER_COPY_IN_BYTES / dp))
        reduce = self.memory_pass(params, reduces * REDUCE_COPY_IN_BYTES)
        if dp_type == "zero2":
            accumulate = self.memory_pass(params, ACCUMULATE_BYTES)
            return per_mb + accumulate, reduce - accumulate
        return per_mb + reduce, 0.0

    def fold_pass(self, params: float, dp_type: str, dp: int) -> float:
        """Per micro-batch: what folding a replicated unit's bf16 gradient into its fp32 main
        gradient moves beyond the in-place accumulation its profiled backward already holds."""
        if not self.has_compute_copy(dp_type, dp):
            return 0.0
        return self.memory_pass(params, FOLD_EXTRA_BYTES)

    def compute_copy_pass(self, params: float, dp_type: str, dp: int) -> float:
        """Refreshing a replicated unit's bf16 weight copy once per step (memory-bound)."""
        if not self.has_compute_copy(dp_type, dp):
            return 0.0
        return self.profile.step_s_per_param * params * COMPUTE_COPY_BYTES / ADAM_STEP_BYTES


    def optimizer_step(self, params: float) -> float:
        return self.profile.step_s_per_param * params

    def grad_passes(self, params: float, replicated: bool) -> float:
        """Once per iteration over the fp32 gradients a rank holds: the clip's norm and scaling, and
        (replicated units) zeroing the flat buffer; memory-bound, priced at the AdamW step's bandwidth."""
        moved = CLIP_BYTES + (ZERO_GRAD_BYTES if replicated else 0)
        return self.profile.step_s_per_param * params * moved / ADAM_STEP_BYTES

