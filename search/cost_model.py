"""Time and memory of a plan, term by term, as the runtime executes it.

Units: seconds and bytes per rank. A stage of `stage_world` ranks receives micro-batches of
`global_micro_batch` samples; a layer with tensor-parallel degree tp has dp = stage_world / tp data-
parallel replicas, each holding global_micro_batch / dp samples of `seq_length` tokens. A Ulysses
layer is priced by search/ulysses_cost.py (its tp = 1 twin, fed a fractional share of samples).

Iteration time (GPipe and 1F1B alike): (chunks + pp_deg - 1) x the slowest stage's time per
micro-batch + the slowest stage's once-per-iteration work (gradient sync not hidden behind the
last backward, gradient clip, optimizer step). The search minimises, per stage, the stage's own
(chunks + pp_deg - 1) x per_mb + per_iter, which is that formula when stages are balanced.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple


from megatron_galvatron.layout import Layout, exchange_sets
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import LayerStrategy, Plan
from megatron_galvatron.profile_format import ModelProfile
from search import ulysses_cost
from search.comm import Network
from search.memory_passes import MemoryPasses
from search.priced_once import PricedOnce
from search.pipeline_time import clock_scales
from search.time_terms import Time
from search.vocab_cost import VocabCost
from search.stage_memory import (BF16, FP8, FP32, GiB, Memory, in_flight, is_sharded, model_state_bytes,
                                 zero_gradient_bytes)


class StageCost(NamedTuple):
    per_mb: float
    per_iter: float
    allocated: float   # bytes at the stage's peak
    budgeted: float    # what the stage counts against the budget (see budget_bytes)
    compute_mb: float  # compute within per_mb
    busy_iter: float   # GPU work within per_iter
    busy_mb: float     # other GPU work within per_mb (compute slowed by overlapping collectives)



@dataclass
class Prediction:
    iter_time_s: float
    tokens_per_s: float
    stage_per_mb: List[float]
    stage_per_iter: List[float]
    stage_allocated: List[float]   # bytes the tensors need at the stage's peak
    stage_reserved: List[float]    # what the allocator holds then (compare with the GPU budget)

    @property
    def peak_mem_gb(self) -> List[float]:
        return [b / GiB for b in self.stage_reserved]

    def plan_fields(self) -> dict:
        """What a plan records as `predicted` (megatron_galvatron.plan.Plan.predicted)."""
        return {"iter_time_s": round(self.iter_time_s, 6), "tokens_per_s": round(self.tokens_per_s, 1),
                "peak_mem_gb": [round(g, 3) for g in self.peak_mem_gb],
                "peak_alloc_gb": [round(b / GiB, 3) for b in self.stage_allocated]}


@functools.lru_cache(maxsize=None)
def _largest_exchange_set(src: Layout, dst: Layout, stage_world: int, gpus_per_node: int) -> Tuple[int, bool]:
    """Ranks in the largest exchange set, and whether any set spans nodes (a stage starts on a
    node boundary or lies inside one node)."""
    sets = exchange_sets(src, dst, stage_world)
    return max(len(m) for m in sets), any(m[0] // gpus_per_node != m[-1] // gpus_per_node for m in sets)


def _blocks(lo: Layout, stage_world: int) -> int:
    """Into how many blocks a layout cuts the micro-batch's activation."""
    return stage_world // lo.tp * (lo.tp if lo.sp else 1)


class CostModel(MemoryPasses, PricedOnce, VocabCost):
    def __init__(self, model: GPTConfig, profile: ModelProfile, net: Network):
        self.model = model
        self.profile = profile
        self.net = net
        self._memo = None  # see PricedOnce

    def prefetches_zero_gathers(self) -> bool:
        """Each sharded layer starts gathering the next one's parameters while it computes
        (model/parallelize.py), so a ZeRO layer's forward all-gather hides beside a forward."""
        return True

    # ---------------------------------------------------------------- groups inside a stage
    @staticmethod
    def tp_group(s, stage_world: int) -> Tuple[int, int]:
        """(size, rank stride) of the TP group of rank 0 of the stage."""
        return s.tp, Layout.of(s, stage_world).strides(stage_world)[0]

    @staticmethod
    def dp_group(s, stage_world: int) -> Tuple[int, int]:
        """(size, rank stride) of the DP group of rank 0 of the stage."""
        return stage_world // s.tp, Layout.of(s, stage_world).strides(stage_world)[1]

    def _activation_bytes(self, samples: float, dtype_bytes: int = BF16) -> float:
        """Hidden states of `samples` sequences, [seq, samples, hidden], `dtype_bytes` per element."""
        return samples * self.model.seq_length * self.model.hidden_size * dtype_bytes

    # ---------------------------------------------------------------- transformer layer
    def layer_compute(self, s: LayerStrategy, stage_world: int, global_micro_batch: int) -> Tuple[float, float]:
        if s.ulysses:
            return self.layer_compute(ulysses_cost.compute_twin(s), stage_world, global_micro_batch)
        dp = stage_world // s.tp
        if s.fp8:  # measured only on bf16 weights, as the runtime runs a float8 layer
            fits = self.profile.fp8_tables(s.fp8, s.tp, s.sp).fits
        else:
            fits = self.profile.bf16_layer_fits(s.tp, s.sp) if self.bf16_unit(s.dp_type, dp) else None
        fwd, bwd = fits or self.profile.layer_fits(s.tp, s.sp)
        tokens = global_micro_batch / dp * self.model.seq_length
        return fwd(tokens), bwd(tokens)

    def _tp_block_comm(self, s, stage_world: int, global_micro_batch: int) -> Tuple[float, float, float, float]:
        """TP collectives of one block (attention or MLP) and micro-batch: (column-parallel side
        forward, row-parallel side forward, column-parallel side backward, row-parallel side backward).

        Each block enters through a column-parallel linear fed by a norm and leaves through a
        row-parallel one. The column-parallel side moves the norm's output (copy: nothing forward,
        the input gradient all-reduced backward; sp: the input all-gathered forward, its gradient
        reduce-scattered backward), the row-parallel side the matmul's bf16 output (all-reduce, or
        sp's reduce-scatter) forward and its bf16 gradient backward (sp: all-gather). Units on bf16
        weights are bf16 throughout; a unit that is not (`bf16_unit`) computes its norms in fp32 and
        its column-parallel side moves fp32."""
        if s.tp == 1 or s.ulysses:
            return 0.0, 0.0, 0.0, 0.0
        size, stride = self.tp_group(s, stage_world)
        dp = stage_world // s.tp
        samples = global_micro_batch / dp
        norm = self._activation_bytes(samples, BF16 if self.bf16_unit(s.dp_type, dp) else FP32)
        mm = self._activation_bytes(samples, BF16)
        c = self.net.collective
        if s.sp:
            return (c("all_gather", size, stride, norm), c("reduce_scatter", size, stride, mm),
                    c("reduce_scatter", size, stride, norm), c("all_gather", size, stride, mm))
        return 0.0, c("all_reduce", size, stride, mm), c("all_reduce", size, stride, norm), 0.0

    def tp_comm(self, s, stage_world: int, global_micro_batch: int) -> Tuple[float, float]:
        """Megatron TP communication of one micro-batch, both blocks: (forward, backward)."""
        col_f, row_f, col_b, row_b = self._tp_block_comm(s, stage_world, global_micro_batch)
        return 2 * (col_f + row_f), 2 * (col_b + row_b)

    def recompute_share(self, s: LayerStrategy, dp: int) -> float:
        """Share of the layer's forward time its checkpointed backward repeats: as the profiler
        timed it where the profile has it, else estimated (recompute_fraction)."""
        if s.fp8:
            measured = self.profile.fp8_tables(s.fp8, s.tp, s.sp).recompute_fraction
        else:
            measured = self.profile.measured_recompute_fraction(s.tp, s.sp, self.bf16_unit(s.dp_type, dp))
        return self.recompute_fraction() if measured is None else measured

    def recompute_fraction(self) -> float:
        """Share of a layer's forward that checkpointing repeats in the backward.

        PyTorch's non-reentrant checkpoint stops recomputing once the last tensor the forward saved
        is back (early stop, its default). That is the input of the MLP's second matmul, saved as the
        matmul starts, so the matmul itself, its TP reduction and the residual add are not redone.
        The forward's time is shared in proportion to multiply-adds per token: the four matmuls and
        causal attention (half of seq x hidden for scores, as much for values)."""
        m = self.model
        h, f, kv = m.hidden_size, m.ffn_hidden_size, m.kv_size
        up = (2 if m.swiglu else 1) * h * f  # SwiGLU: gate and up
        total = h * (h + 2 * kv) + h * h + up + f * h + m.seq_length * h
        return 1.0 - f * h / total

    def _dp_sync(self, dp_type: str, params: float, stage_world: int, s, fwd_window: float,
                 bwd_window: float) -> Tuple[float, float, float]:
        """Data-parallel traffic of a layer holding `params` (the TP shard) as (extra per micro-batch on
        the forward, extra per micro-batch on the backward, extra per iteration).

        Replicated: the layer's flat fp32 gradient buffer is all-reduced once, when its last gradient
        of the last micro-batch is ready, beside the backward of the layers before it (the layer's own
        backward stands in for theirs). FSDP2 units: every unit is its own FSDP root, so nothing
        prefetches implicitly; the runtime has each sharded layer prefetch its neighbour, so a
        forward's all-gather runs beside the previous layer's forward (the layer's own forward
        stands in for it), on every micro-batch, for ZeRO-2 as well (FSDP2 reshards after the
        backward). Without prefetch it is exposed. ZeRO-3 gathers again for the backward and
        reduce-scatters every micro-batch, ZeRO-2 reduce-scatters on the last one; both beside the
        backward compute."""
        dp, stride = self.dp_group(s, stage_world)
        if dp == 1:
            return 0.0, 0.0, 0.0
        grad, par = FP32 * params, self.gathered_bytes(s, params)
        net = self.net
        if not is_sharded(dp_type, dp):
            ar = net.collective("all_reduce", dp, stride, grad)
            return 0.0, 0.0, net.overlap(bwd_window, ar, "all_reduce") - bwd_window
        ag = net.collective("all_gather", dp, stride, par)
        rs = net.collective("reduce_scatter", dp, stride, grad)
        fwd_gather = net.overlap(fwd_window, ag, "all_gather") - fwd_window if self.prefetches_zero_gathers() else ag
        if dp_type == "zero2":
            return fwd_gather, 0.0, net.overlap(bwd_window, rs, "reduce_scatter") - bwd_window
        return fwd_gather, net.overlap_many(bwd_window, [(ag, "all_gather"), (rs, "reduce_scatter")]) - bwd_window, 0.0

    def float8_gathered(self, s: LayerStrategy, params: float) -> float:
        """How many of a sharded layer's `params` (its TP shard) FSDP gathers in float8: a zero3
        layer whose linears cast tensorwise gathers their weights so (fp8/fsdp_gather.py), its
        norms and biases in bf16; rowwise layers gather bf16 (their casts run along each matmul's
        reduction dim), as zero2 ones do."""
        if s.fp8 == "tensorwise" and s.dp_type == "zero3":
            return min(params, self.model.linear_weight_count() / s.tp)
        return 0.0

    def gathered_bytes(self, s: LayerStrategy, params: float) -> float:
        """Bytes of a sharded layer's weights that one of its FSDP all-gathers carries."""
        return BF16 * params - (BF16 - FP8) * self.float8_gathered(s, params)

    def layer_time(self, s: LayerStrategy, stage_world: int, global_micro_batch: int) -> Time:
        return self._remembered("time", self._layer_time, s, stage_world, global_micro_batch)

    def _layer_time(self, s: LayerStrategy, stage_world: int, global_micro_batch: int) -> Time:
        if s.ulysses:
            return ulysses_cost.layer_time(self, s, stage_world, global_micro_batch)
        fwd, bwd = self.layer_compute(s, stage_world, global_micro_batch)
        col_f, row_f, col_b, row_b = self._tp_block_comm(s, stage_world, global_micro_batch)
        tp_fwd, tp_bwd = 2 * (col_f + row_f), 2 * (col_b + row_b)
        recompute = fwd * self.recompute_share(s, stage_world // s.tp) if s.checkpoint else 0.0
        recompute_tp = 2 * col_f + row_f if s.checkpoint else 0.0  # the MLP's output reduction is skipped
        bwd_window = bwd + recompute
        params = self.profile.layer_param_count / s.tp
        dp = stage_world // s.tp
        f_extra, b_extra, sync = self._dp_sync(s.dp_type, params, stage_world, s, fwd, bwd_window)
        fsdp_mb, fsdp_iter = self.fsdp_passes(s.dp_type, params, dp)
        passes_mb = fsdp_mb + self.fold_pass(params, s.dp_type, dp)  # memory-bound, compute stream
        per_mb = fwd + f_extra + tp_fwd + bwd_window + b_extra + tp_bwd + recompute_tp + passes_mb
        sharded = is_sharded(s.dp_type, dp)
        local = params / dp if sharded else params
        copy = self.compute_copy_pass(local, s.dp_type, dp)
        busy = self.optimizer_step(local) + self.grad_passes(local, not sharded) + copy + fsdp_iter
        # with prefetch the forward's extra is compute slowed by the hidden all-gather; without,
        # the all-gather is exposed and the GPU waits
        overlapped = b_extra + (f_extra if self.prefetches_zero_gathers() else 0.0) + passes_mb
        return Time(per_mb, sync + busy, fwd + bwd_window, busy, overlapped)

    def layer_activation(self, s: LayerStrategy, dp: int) -> Tuple[float, float, float]:
        """(bytes per token saved for backward, bytes saved per micro-batch whatever its size,
        bytes per token a checkpointed layer keeps) for the layer as the runtime runs it.

        Every layer computes on bf16 weights without autocast (FSDP units on their gathered
        weights, replicated ones on their bf16 copy): no weight copies are saved beside the weights
        themselves, the residual stream is bf16, and each of the two norms saves a bf16 input and a
        bf16 output where under autocast it saves an fp32 input and the bf16 cast the next matmul
        takes, 2 x hidden bytes less per token of the norm (its tokens are sequence-sharded under
        sp); a checkpointed layer keeps its input in bf16, half the fp32 one. Profiles that measured
        the bf16 layer (`layer.bf16`) are used as they are; others are corrected from the autocast
        tables that way. A layer not on bf16 weights (`bf16_unit`) is the autocast one:
        fp32 residual stream and norm inputs, and bf16 copies of the weights kept by every forward
        (the profile's constant, else 2 bytes per local parameter)."""
        p, h = self.profile, self.model.hidden_size
        if s.fp8:  # as measured; tensorwise keeps float8 weight casts per micro-batch (the constant)
            e = p.fp8_tables(s.fp8, s.tp, s.sp)
            return e.activation_per_token, e.constant, e.checkpoint_per_token
        act, ckpt = p.activation_per_token(s.tp, s.sp), p.checkpoint_per_token(s.tp, s.sp)
        if not self.bf16_unit(s.dp_type, dp):
            const = p.layer_constant(s.tp, s.sp)
            return act, (BF16 * p.layer_param_count / s.tp if const is None else const), ckpt
        norm_tokens = 1.0 / s.tp if s.sp else 1.0
        sact, sckpt = p.bf16_activation_per_token(s.tp, s.sp), p.bf16_checkpoint_per_token(s.tp, s.sp)
        return (act - 2 * 2 * h * norm_tokens if sact is None else sact), 0.0, (ckpt / 2 if sckpt is None else sckpt)

    def backward_work_per_token(self, s: LayerStrategy, dp: int) -> float:
        """Gradient buffers a layer's backward adds on top of what its forward saved: the gradient of
        the residual stream it receives (bf16; fp32 for a unit not on bf16 weights;
        sequence-sharded under sp) and the bf16 gradient of the MLP's widest activation, the first matmul's output
        (its saved tensors are freed about as fast as the next gradients appear)."""
        m = self.model
        residual = (BF16 if self.bf16_unit(s.dp_type, dp) else FP32) * m.hidden_size / (s.tp if s.sp else 1)
        widest = m.ffn_hidden_size * (2 if m.swiglu else 1) / s.tp  # SwiGLU: gate and up together
        return residual + BF16 * widest

    def layer_memory(self, s: LayerStrategy, stage_world: int, global_micro_batch: int) -> Memory:
        return self._remembered("memory", self._layer_memory, s, stage_world, global_micro_batch)

    def _layer_memory(self, s: LayerStrategy, stage_world: int, global_micro_batch: int) -> Memory:
        if s.ulysses:
            return ulysses_cost.layer_memory(self, s, stage_world, global_micro_batch)
        dp = stage_world // s.tp
        tokens = global_micro_batch / dp * self.model.seq_length
        per_token, const, ckpt = self.layer_activation(s, dp)
        full = per_token * tokens + const
        kept = ckpt * tokens if s.checkpoint else full
        params = self.profile.layer_param_count / s.tp
        # While the layer runs its backward: its gradient buffers; a checkpointed layer's rebuilt
        # activations; a ZeRO-3 layer's weights, gathered again (bf16, or float8 ones).
        transient = (self.backward_work_per_token(s, dp) * tokens + (full if s.checkpoint else 0.0)
                     + (self.gathered_bytes(s, params) if s.dp_type == "zero3" and dp > 1 else 0.0))
        lazy, settled = zero_gradient_bytes(params, dp, s.dp_type)
        states = model_state_bytes(params, dp, s.dp_type, self.has_compute_copy(s.dp_type, dp))
        if dp > 1:  # float8-gathered weights keep their shard's float8 cast from step to step
            states += FP8 * self.float8_gathered(s, params) / dp
        return Memory(states, kept, transient, lazy, settled, lazy if s.dp_type == "zero3" else 0.0)

    def relayout(self, stage_world: int, global_micro_batch: int, src: Optional[Layout] = None,
                 dst: Optional[Layout] = None) -> float:
        """Forward + backward cost, per micro-batch, of a layout change between adjacent layers.
        The runtime all-gathers each rank's block within its exchange set
        (megatron_galvatron.layout.exchange_sets): forward the src blocks, backward the dst blocks'
        gradients; the largest set sets the time, at the network's numbers where a set leaves its
        node. Without both layouts: an all-gather over the
        whole stage, an upper bound. Priced as fp32, the residual stream's dtype when replicated
        units computed under autocast; on bf16 units it is bf16, so this errs on the slow side
        (the validation runs were matched with it so)."""
        full = self._activation_bytes(global_micro_batch, FP32)
        if src is None or dst is None:
            return 2 * self.net.collective("all_gather", stage_world, 1, full)
        if src == dst:
            return 0.0
        k, spans = _largest_exchange_set(min(src, dst), max(src, dst), stage_world, self.net.gpus_per_node)  # symmetric
        if k == 1:
            return 0.0
        stride = self.net.gpus_per_node if spans else 1
        return sum(self.net.collective("all_gather", k, stride, k * full / _blocks(lo, stage_world))
                   for lo in (src, dst))

    def p2p(self, pp_deg: int, stage_world: int, global_micro_batch: int) -> float:
        """One activation (or gradient) transfer between adjacent stages, per micro-batch."""
        return self.net.p2p(pp_deg, stage_world, self._activation_bytes(global_micro_batch) / stage_world)

    # ---------------------------------------------------------------- allocator
    @property
    def ratio(self) -> float:
        return self.profile.reserved_over_allocated

    def reserved(self, budgeted: float) -> float:
        """What the allocator holds for a stage that counts `budgeted` bytes (budget_bytes)."""
        return self.ratio * budgeted + self.profile.fixed_overhead_bytes

    def allocatable(self, budget: float) -> float:
        """Budgeted bytes (budget_bytes) that fit when the allocator may hold `budget` bytes."""
        return (budget - self.profile.fixed_overhead_bytes) / self.ratio

    # ---------------------------------------------------------------- a whole plan
    def stage_costs(self, plan: Plan, stage: int, global_micro_batch: Optional[int] = None) -> StageCost:
        """Per micro-batch time, per iteration time, allocated bytes at peak and what they count
        against the budget, of one stage (and the compute within the times), for micro-batches
        of `global_micro_batch` samples (default: the plan's largest, which sets the memory)."""
        sw, pp = plan.stage_world, plan.pp_deg
        mb = plan.global_micro_batch_size if global_micro_batch is None else global_micro_batch
        flight = in_flight(plan.pipeline_type, plan.num_micro_batches, pp, stage)
        layers = [plan.layers[i] for i in plan.stage_layers(stage)]
        vt, vm = self.vocab(plan.vocab, sw, mb, pp, stage)
        per_mb, per_iter, compute, busy, busy_mb = vt.per_mb, vt.per_iter, vt.compute, vt.busy_iter, vt.busy_mb
        persistent, transient = vm.persistent(flight), vm.transient
        budgeted = vm.budgeted(flight, self.ratio)
        for s in layers:
            t, m = self.layer_time(s, sw, mb), self.layer_memory(s, sw, mb)
            per_mb += t.per_mb
            per_iter += t.per_iter
            compute += t.compute
            busy += t.busy_iter
            busy_mb += t.busy_mb
            persistent += m.persistent(flight)
            budgeted += m.budgeted(flight, self.ratio)
            transient = max(transient, m.transient)
        layouts = [Layout.of(s, sw) for s in layers]
        if stage == 0:
            layouts.insert(0, Layout.of(plan.vocab, sw))
        if stage == pp - 1:
            layouts.append(Layout.of(plan.vocab, sw))
        per_mb += sum(self.relayout(sw, mb, a, b) for a, b in zip(layouts, layouts[1:]))
        per_mb += ((stage > 0) + (stage < pp - 1)) * self.p2p(pp, sw, mb)
        return StageCost(per_mb, per_iter, persistent + transient, budgeted + transient, compute, busy, busy_mb)

    def micro_batches_priced(self, plan: Plan, per_mb: Sequence[float]) -> float:
        """The pipeline formula's micro-batch count in largest micro-batches: a smaller last one
        counts as its bottleneck time over the largest's, so the iteration sums the micro-batches'
        bottleneck times, plus a fill and drain priced (on the safe side) at the largest."""
        sizes = plan.micro_batch_sizes
        if sizes[-1] == sizes[0]:
            return float(len(sizes))
        last = max(self.stage_costs(plan, i, sizes[-1]).per_mb for i in range(plan.pp_deg))
        return len(sizes) - 1 + last / max(per_mb)

    def evaluate(self, plan: Plan) -> Prediction:
        per_mb, per_iter, alloc, budgeted, compute, busy, busy_mb = zip(*(self.stage_costs(plan, i)
                                                                          for i in range(plan.pp_deg)))
        it, scale = clock_scales(list(per_mb), list(per_iter), list(compute), list(busy_mb), list(busy),
                                 self.micro_batches_priced(plan, per_mb), self.profile.sustained_slowdown,
                                 self.profile.sustained_curve)
        per_mb = [m - c * (1.0 - f) for m, c, f in zip(per_mb, compute, scale)]
        tokens = plan.global_bsz * self.model.seq_length
        return Prediction(it, tokens / it, list(per_mb), list(per_iter), list(alloc),
                          [self.reserved(b) for b in budgeted])
