"""Time and memory of a plan, term by term, as the runtime executes it.

Units: seconds and bytes per rank. A stage of `stage_world` ranks receives micro-batches of
`global_micro_batch` samples; a layer with tensor-parallel degree tp has dp = stage_world / tp data-
parallel replicas, each holding global_micro_batch / dp samples of `seq_length` tokens.

Iteration time (GPipe and 1F1B alike): (chunks + pp_deg - 1) x the slowest stage's time per
micro-batch + the slowest stage's once-per-iteration work (gradient sync not hidden behind the
last backward, gradient clip, optimizer step). The search minimises, per stage, the stage's own
(chunks + pp_deg - 1) x per_mb + per_iter, which is that formula when stages are balanced.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple


from megatron_galvatron.layout import Layout, exchange_sets
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from megatron_galvatron.profile_format import ModelProfile
from search.comm import Network
from search.memory_passes import MemoryPasses
from search.pipeline_time import clock_scales
from search.stage_memory import (BF16, FP8, FP32, GiB, Memory, in_flight, is_sharded, model_state_bytes,
                                 zero_gradient_bytes)


@dataclass(frozen=True)
class Time:
    per_mb: float    # on the critical path of every micro-batch
    per_iter: float  # once per iteration
    compute: float = 0.0    # the part of per_mb that is compute (priced at the sustained clock)
    busy_iter: float = 0.0  # the part of per_iter the GPU computes (memory-bound passes)
    busy_mb: float = 0.0    # the part of per_mb that is compute slowed by overlapping communication


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
def _largest_exchange_set(src: Layout, dst: Layout, stage_world: int) -> int:
    return max(len(m) for m in exchange_sets(src, dst, stage_world))


def _blocks(lo: Layout, stage_world: int) -> int:
    """Into how many blocks a layout cuts the micro-batch's activation."""
    return stage_world // lo.tp * (lo.tp if lo.sp else 1)


class CostModel(MemoryPasses):
    def __init__(self, model: GPTConfig, profile: ModelProfile, net: Network):
        self.model = model
        self.profile = profile
        self.net = net

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
        dp = stage_world // s.tp
        if s.fp8:  # measured only on bf16 weights, as the runtime runs a float8 layer
            fits = self.profile.fp8_tables(s.fp8, s.tp, s.sp).fits
        else:
            fits = self.profile.bf16_layer_fits(s.tp, s.sp) if self.bf16_unit(s.dp_type, dp) else None
        fwd, bwd = fits or self.profile.layer_fits(s.tp, s.sp)
        tokens = global_micro_batch // dp * self.model.seq_length
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
        if s.tp == 1:
            return 0.0, 0.0, 0.0, 0.0
        size, stride = self.tp_group(s, stage_world)
        dp = stage_world // s.tp
        samples = global_micro_batch // dp
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
        dp = stage_world // s.tp
        tokens = global_micro_batch // dp * self.model.seq_length
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
        gradients; the largest set sets the time. Without both layouts: an all-gather over the
        whole stage, an upper bound. Priced as fp32, the residual stream's dtype when replicated
        units computed under autocast; on bf16 units it is bf16, so this errs on the slow side
        (the validation runs were matched with it so)."""
        full = self._activation_bytes(global_micro_batch, FP32)
        if src is None or dst is None:
            return 2 * self.net.collective("all_gather", stage_world, 1, full)
        if src == dst:
            return 0.0
        k = _largest_exchange_set(src, dst, stage_world)
        if k == 1:
            return 0.0
        return sum(self.net.collective("all_gather", k, 1, k * full / _blocks(lo, stage_world))
                   for lo in (src, dst))

    def p2p(self, pp_deg: int, stage_world: int, global_micro_batch: int) -> float:
        """One activation (or gradient) transfer between adjacent stages, per micro-batch."""
        return self.net.p2p(pp_deg, stage_world, self._activation_bytes(global_micro_batch) / stage_world)

    # ---------------------------------------------------------------- embedding + LM head
    def vocab_copies(self, pp_deg: int, stage: int) -> int:
        first, last = stage == 0, stage == pp_deg - 1
        if first and last:
            return 1 if self.model.tie_embeddings else 2
        return int(first) + int(last)

    def vocab_params(self, v: VocabStrategy, pp_deg: int, stage: int) -> Tuple[float, float]:
        """(parameters of one vocab matrix shard, parameters of the whole vocab unit on this stage)."""
        one = self.profile.vocab_param_count / v.tp
        params = self.vocab_copies(pp_deg, stage) * one
        if stage == 0 and self.model.learned_positions:  # learned positions, replicated over TP
            params += self.model.seq_length * self.model.hidden_size
        return one, params

    def _vocab_dp(self, v: VocabStrategy, params: float, stage_world: int, first: bool, last: bool,
                  bwd: float) -> Tuple[float, float]:
        """Data-parallel traffic of the vocab unit as (per micro-batch, per iteration).

        The unit's gradients are complete only after its last backward on the stage: the embedding's,
        which ends the first stage's backward with nothing left to hide behind, or the LM head's,
        which starts the last stage's backward (the head's backward stands in for the layers' after
        it). FSDP2 gathers the weights for each forward method called (embedding, head), ZeRO-3
        again for each backward; ZeRO-2 keeps them from the first forward until the first backward,
        which reshards them, so a unit holding both ends gathers again for the embedding's backward."""
        dp, stride = self.dp_group(v, stage_world)
        if dp == 1:
            return 0.0, 0.0
        net = self.net
        grad, par = FP32 * params, BF16 * params

        def behind_head(*comms: Tuple[float, str]) -> float:
            return net.overlap_many(bwd, list(comms)) - bwd

        if not is_sharded(v.dp_type, dp):
            ar = net.collective("all_reduce", dp, stride, grad)
            return 0.0, (ar if first else behind_head((ar, "all_reduce")))
        ag = net.collective("all_gather", dp, stride, par)
        rs = net.collective("reduce_scatter", dp, stride, grad)
        ends = int(first) + int(last)
        if v.dp_type == "zero3":
            per_mb = (ends * ag + (behind_head((ag, "all_gather"), (rs, "reduce_scatter")) if last else 0.0)
                      + ((ag + rs) if first else 0.0))
            return per_mb, 0.0
        per_mb = ag + (ag if ends == 2 else 0.0)
        return per_mb, (behind_head((rs, "reduce_scatter")) if last else 0.0) + (rs if first else 0.0)

    def vocab(self, v: VocabStrategy, stage_world: int, global_micro_batch: int, pp_deg: int,
              stage: int) -> Tuple[Time, Memory]:
        """Embedding on the first stage, LM head + loss on the last (gpt2 ties them: a copy on each)."""
        first, last = stage == 0, stage == pp_deg - 1
        if self.vocab_copies(pp_deg, stage) == 0:
            return Time(0.0, 0.0), Memory(0.0, 0.0, 0.0)
        net, p, h = self.net, self.profile, self.model.hidden_size
        dp = stage_world // v.tp
        sharded = is_sharded(v.dp_type, dp)
        bf16 = self.bf16_unit(v.dp_type, dp)
        samples = global_micro_batch // dp
        tokens = samples * self.model.seq_length
        # A unit not on bf16 weights (autocast over an fp32 table and an fp32 norm) outputs fp32
        act = self._activation_bytes(samples, BF16 if bf16 else FP32)
        size, stride = self.tp_group(v, stage_world)
        one, params = self.vocab_params(v, pp_deg, stage)
        per_mb = bwd = compute = 0.0
        if first:  # the vocab-parallel embedding sums partial lookups over the TP group
            per_mb += net.collective("reduce_scatter" if v.sp else "all_reduce", size, stride, act)
            emb = p.embedding_fits(v.tp)
            if emb is not None:
                compute += emb[0](tokens) + emb[1](tokens)
                per_mb += emb[0](tokens) + emb[1](tokens)
        if last:
            f, b = (p.bf16_vocab_fits(v.tp) if bf16 else None) or p.vocab_fits(v.tp)
            fwd, bwd = f(tokens), b(tokens)
            # the head's input: gathered forward and its gradient reduce-scattered backward under sp,
            # else copied forward and its gradient all-reduced backward
            if v.sp:
                head = (net.collective("all_gather", size, stride, act)
                        + net.collective("reduce_scatter", size, stride, act))
            else:
                head = net.collective("all_reduce", size, stride, act)
            # the loss reduces the max, then sum-exp and target logit together (fp32 per token)
            loss = (net.collective("all_reduce", size, stride, tokens * FP32)
                    + net.collective("all_reduce", size, stride, 2 * tokens * FP32))
            compute += fwd + bwd
            per_mb += fwd + bwd + head + loss
        dp_mb, sync = self._vocab_dp(v, params, stage_world, first, last, bwd)
        per_mb += dp_mb
        # FSDP2 gathers for each forward method the unit runs (embedding, head), ZeRO-3 again for
        # each backward, ZeRO-2 again for the embedding's backward when the unit holds both; one
        # reduce-scatter per end (see _vocab_dp)
        ends = int(first) + int(last)
        gathers = 2 * ends if v.dp_type == "zero3" else 1 + int(ends == 2)
        fsdp_mb, fsdp_iter = self.fsdp_passes(v.dp_type, params, dp, gathers, ends)
        # the LM head's weight folds like a layer's; the embedding was profiled on an fp32 table,
        # whose in-place fp32 gradient accumulation (read 4 + 4, write 4) moved more than the fold
        passes_mb = fsdp_mb + (self.fold_pass(one, v.dp_type, dp) if last else 0.0)
        per_mb += passes_mb
        local = params / dp if sharded else params
        if self.model.tie_embeddings and pp_deg > 1:
            # the two copies' gradients are summed once per step over the (first, last) stage pair
            sync += net.collective("all_reduce", 2, (pp_deg - 1) * stage_world, FP32 * (one / dp if sharded else one))
        busy = (self.optimizer_step(local) + self.grad_passes(local, not sharded)
                + self.compute_copy_pass(local, v.dp_type, dp) + fsdp_iter)
        time = Time(per_mb, sync + busy, compute, busy, passes_mb)

        act_kept = transient = 0.0
        if last:
            if bf16:
                per_token = p.bf16_vocab_activation_per_token(v.tp)
                if per_token is None:  # the final norm's input is bf16, and no bf16 cast is saved beside it
                    per_token = p.vocab_activation_per_token(v.tp) - 2 * h / (v.tp if v.sp else 1)
                const = 0.0
            else:
                per_token = p.vocab_activation_per_token(v.tp)
                const = p.vocab_constant(v.tp)
                const = BF16 * one if const is None else const
            act_kept = per_token * tokens + const
            # The loss's backward writes the bf16 gradient of the logits while the logits are still
            # saved, and the LM head then makes its weight gradient in bf16, at the start of the
            # backward when every activation of the stage is still alive.
            transient = BF16 * self.model.vocab_size / v.tp * tokens + BF16 * one
        if v.dp_type == "zero3" and dp > 1:
            transient += BF16 * one
        return time, Memory(model_state_bytes(params, dp, v.dp_type, self.has_compute_copy(v.dp_type, dp)),
                            act_kept, transient)

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
    def stage_costs(self, plan: Plan, stage: int) -> StageCost:
        """Per micro-batch time, per iteration time, allocated bytes at peak and what they count
        against the budget, of one stage (and the compute within the times)."""
        sw, mb, pp = plan.stage_world, plan.global_micro_batch_size, plan.pp_deg
        flight = in_flight(plan.pipeline_type, plan.chunks, pp, stage)
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

    def evaluate(self, plan: Plan) -> Prediction:
        per_mb, per_iter, alloc, budgeted, compute, busy, busy_mb = zip(*(self.stage_costs(plan, i)
                                                                          for i in range(plan.pp_deg)))
        it, scale = clock_scales(list(per_mb), list(per_iter), list(compute), list(busy_mb), list(busy),
                                 plan.chunks, self.profile.sustained_slowdown, self.profile.sustained_curve)
        per_mb = [m - c * (1.0 - f) for m, c, f in zip(per_mb, compute, scale)]
        tokens = plan.global_bsz * self.model.seq_length
        return Prediction(it, tokens / it, list(per_mb), list(per_iter), list(alloc),
                          [self.reserved(b) for b in budgeted])
