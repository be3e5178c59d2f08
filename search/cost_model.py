"""Time and memory of a plan, term by term, as the runtime executes it.

Units: seconds and bytes per rank. A stage of `stage_world` ranks receives micro-batches of
`micro_batch` samples; a layer with tensor-parallel degree tp has dp = stage_world / tp data-
parallel replicas, each holding micro_batch / dp samples of `seq_length` tokens.

Iteration time (GPipe and 1F1B alike): (chunks + pp_deg - 1) x the slowest stage's time per
micro-batch + the slowest stage's once-per-iteration work (gradient sync not hidden behind the
last backward, optimizer step). The search minimises, per stage, the stage's own
(chunks + pp_deg - 1) x per_mb + per_iter, which is that formula when stages are balanced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from search.comm import Network
from search.model_config import ModelConfig
from search.profiles import ModelProfile
from search.strategies import layout

GiB = float(2 ** 30)
BF16 = 2
FP32 = 4
ADAM_STATES = 8  # fp32 m and v


# -------------------------------------------------------------------- plain formulas

def microbatches_in_flight(pipeline_type: str, chunks: int, pp_deg: int, stage: int) -> int:
    """Micro-batches whose activations a stage holds at its peak."""
    if pipeline_type == "gpipe":
        return chunks
    return min(chunks, pp_deg - stage)


def model_state_bytes(params: float, dp: int, dp_type: str) -> float:
    """fp32 master weights + fp32 gradients + Adam m, v for `params` (the rank's TP shard)."""
    if dp_type == "ddp" or dp == 1:
        return (FP32 + FP32 + ADAM_STATES) * params
    if dp_type == "zero2":
        return (FP32 + (FP32 + ADAM_STATES) / dp) * params
    if dp_type == "zero3":
        return (FP32 + FP32 + ADAM_STATES) / dp * params
    raise ValueError(dp_type)


def pipeline_iteration_time(stage_per_mb: List[float], stage_per_iter: List[float], chunks: int) -> float:
    pp = len(stage_per_mb)
    return (chunks + pp - 1) * max(stage_per_mb) + max(stage_per_iter)


@dataclass(frozen=True)
class Time:
    per_mb: float    # on the critical path of every micro-batch
    per_iter: float  # once per iteration


@dataclass(frozen=True)
class Memory:
    states: float        # parameters, gradients, optimizer states
    activation: float    # kept per in-flight micro-batch
    transient: float     # alive only while this layer computes (the stage peak takes the largest)

    def persistent(self, in_flight: int) -> float:
        return self.states + in_flight * self.activation


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


class CostModel:
    def __init__(self, model: ModelConfig, profile: ModelProfile, net: Network):
        self.model = model
        self.profile = profile
        self.net = net

    # ---------------------------------------------------------------- groups inside a stage
    @staticmethod
    def tp_group(s, stage_world: int) -> Tuple[int, int]:
        """(size, stride) of the TP group of rank 0 of the stage."""
        return (s.tp, 1) if s.tp_consec else (s.tp, stage_world // s.tp)

    @staticmethod
    def dp_group(s, stage_world: int) -> Tuple[int, int]:
        dp = stage_world // s.tp
        return (dp, s.tp) if s.tp_consec else (dp, 1)

    def _activation_bytes(self, samples: float) -> float:
        """bf16 hidden states of `samples` sequences: [seq, samples, hidden]."""
        return samples * self.model.seq_length * self.model.hidden_size * BF16

    # ---------------------------------------------------------------- transformer layer
    def layer_compute(self, s: LayerStrategy, stage_world: int, micro_batch: int) -> Tuple[float, float]:
        fwd, bwd = self.profile.layer_fits(s.tp, s.sp)
        tokens = micro_batch // (stage_world // s.tp) * self.model.seq_length
        return fwd(tokens), bwd(tokens)

    def tp_comm(self, s, stage_world: int, micro_batch: int) -> float:
        """Megatron TP communication of one direction (forward or backward) for one micro-batch."""
        if s.tp == 1:
            return 0.0
        size, stride = self.tp_group(s, stage_world)
        act = self._activation_bytes(micro_batch // (stage_world // s.tp))
        if s.sp:
            return 2 * (self.net.collective("all_gather", size, stride, act)
                        + self.net.collective("reduce_scatter", size, stride, act))
        return 2 * self.net.collective("all_reduce", size, stride, act)

    def optimizer_step(self, params: float) -> float:
        return self.profile.step_s_per_param * params

    def _dp_sync(self, dp_type: str, params: float, stage_world: int, s, fwd_window: float,
                 bwd_window: float) -> Tuple[float, float, float]:
        """Data-parallel traffic of `params` (the TP shard) as (extra per micro-batch on the forward,
        extra per micro-batch on the backward, extra per iteration), each already overlapped."""
        dp, stride = self.dp_group(s, stage_world)
        if dp == 1:
            return 0.0, 0.0, 0.0
        grad, par = FP32 * params, BF16 * params
        net = self.net
        if dp_type == "ddp":
            ar = net.collective("all_reduce", dp, stride, grad)
            return 0.0, 0.0, net.overlap(bwd_window, ar) - bwd_window
        if dp_type == "zero2":
            rs = net.collective("reduce_scatter", dp, stride, grad)
            ag = net.collective("all_gather", dp, stride, par)
            return 0.0, 0.0, (net.overlap(bwd_window, rs) - bwd_window) + (net.overlap(fwd_window, ag) - fwd_window)
        ag = net.collective("all_gather", dp, stride, par)
        rs = net.collective("reduce_scatter", dp, stride, grad)
        return net.overlap(fwd_window, ag) - fwd_window, net.overlap(bwd_window, ag + rs) - bwd_window, 0.0

    def layer_time(self, s: LayerStrategy, stage_world: int, micro_batch: int) -> Time:
        fwd, bwd = self.layer_compute(s, stage_world, micro_batch)
        tpc = self.tp_comm(s, stage_world, micro_batch)
        recompute, recompute_tp = (fwd, tpc) if s.checkpoint else (0.0, 0.0)
        bwd_window = bwd + recompute
        params = self.profile.layer_param_count / s.tp
        dp = stage_world // s.tp
        f_extra, b_extra, sync = self._dp_sync(s.dp_type, params, stage_world, s, fwd, bwd_window)
        per_mb = fwd + f_extra + tpc + bwd_window + b_extra + tpc + recompute_tp
        step_params = params if s.dp_type == "ddp" else params / dp
        return Time(per_mb, sync + self.optimizer_step(step_params))

    def layer_memory(self, s: LayerStrategy, stage_world: int, micro_batch: int) -> Memory:
        dp = stage_world // s.tp
        tokens = micro_batch // dp * self.model.seq_length
        full = self.profile.activation_per_token(s.tp, s.sp) * tokens
        kept = self.profile.checkpoint_per_token(s.tp, s.sp) * tokens if s.checkpoint else full
        params = self.profile.layer_param_count / s.tp
        transient = (full if s.checkpoint else 0.0) + (BF16 * params if s.dp_type == "zero3" and dp > 1 else 0.0)
        return Memory(model_state_bytes(params, dp, s.dp_type), kept, transient)

    def relayout(self, stage_world: int, micro_batch: int) -> float:
        """Forward + backward cost, per micro-batch, of a layout change between adjacent layers."""
        return 2 * self.net.collective("all_gather", stage_world, 1, self._activation_bytes(micro_batch))

    def p2p(self, pp_deg: int, stage_world: int, micro_batch: int) -> float:
        """One activation (or gradient) transfer between adjacent stages, per micro-batch."""
        return self.net.p2p(pp_deg, stage_world, self._activation_bytes(micro_batch) / stage_world)

    # ---------------------------------------------------------------- embedding + LM head
    def vocab_copies(self, pp_deg: int, stage: int) -> int:
        first, last = stage == 0, stage == pp_deg - 1
        if first and last:
            return 1 if self.model.tied_embeddings else 2
        return int(first) + int(last)

    def vocab(self, v: VocabStrategy, stage_world: int, micro_batch: int, pp_deg: int,
              stage: int) -> Tuple[Time, Memory]:
        """Embedding on the first stage, LM head + loss on the last (gpt2 ties them: a copy on each)."""
        first, last = stage == 0, stage == pp_deg - 1
        copies = self.vocab_copies(pp_deg, stage)
        if copies == 0:
            return Time(0.0, 0.0), Memory(0.0, 0.0, 0.0)
        net = self.net
        dp = stage_world // v.tp
        samples = micro_batch // dp
        tokens = samples * self.model.seq_length
        act = self._activation_bytes(samples)
        size, stride = self.tp_group(v, stage_world)
        one = self.profile.vocab_param_count / v.tp
        params = copies * one
        per_mb = fwd = bwd = 0.0
        if first:  # the vocab-parallel embedding sums partial lookups over the TP group
            per_mb += net.collective("reduce_scatter" if v.sp else "all_reduce", size, stride, act)
        if last:
            f, b = self.profile.vocab_fits(v.tp)
            fwd, bwd = f(tokens), b(tokens)
            if v.sp:
                head = (net.collective("all_gather", size, stride, act)
                        + net.collective("reduce_scatter", size, stride, act))
            else:
                head = net.collective("all_reduce", size, stride, act)
            loss = 3 * net.collective("all_reduce", size, stride, tokens * FP32)  # max, sum-exp, target logit
            per_mb += head + loss
        f_extra, b_extra, sync = self._dp_sync(v.dp_type, params, stage_world, v, fwd, bwd)
        per_mb += fwd + f_extra + bwd + b_extra
        if self.model.tied_embeddings and pp_deg > 1:  # the two copies' gradients are summed each step
            sync += self.net.p2p(pp_deg, stage_world, FP32 * one)
        step_params = params if v.dp_type == "ddp" else params / dp
        act_kept = self.profile.vocab_activation_per_token(v.tp) * tokens if last else 0.0
        transient = BF16 * one if v.dp_type == "zero3" and dp > 1 else 0.0
        return (Time(per_mb, sync + self.optimizer_step(step_params)),
                Memory(model_state_bytes(params, dp, v.dp_type), act_kept, transient))

    # ---------------------------------------------------------------- allocator
    def reserved(self, allocated: float) -> float:
        return self.profile.reserved_over_allocated * allocated + self.profile.fixed_overhead_bytes

    def allocatable(self, budget_bytes: float) -> float:
        """Bytes of tensors that fit when the allocator may hold `budget_bytes`."""
        return (budget_bytes - self.profile.fixed_overhead_bytes) / self.profile.reserved_over_allocated

    # ---------------------------------------------------------------- a whole plan
    def stage_costs(self, plan: Plan, stage: int) -> Tuple[float, float, float]:
        """(per micro-batch time, per iteration time, allocated bytes at peak) of one stage."""
        sw, mb, pp = plan.stage_world, plan.micro_batch_size, plan.pp_deg
        in_flight = microbatches_in_flight(plan.pipeline_type, plan.chunks, pp, stage)
        layers = [plan.layers[i] for i in plan.stage_layers(stage)]
        vt, vm = self.vocab(plan.vocab, sw, mb, pp, stage)
        per_mb, per_iter = vt.per_mb, vt.per_iter
        persistent, transient = vm.persistent(in_flight), vm.transient
        for s in layers:
            t, m = self.layer_time(s, sw, mb), self.layer_memory(s, sw, mb)
            per_mb += t.per_mb
            per_iter += t.per_iter
            persistent += m.persistent(in_flight)
            transient = max(transient, m.transient)
        layouts = [layout(s, sw) for s in layers]
        if stage == 0:
            layouts.insert(0, layout(plan.vocab, sw))
        if stage == pp - 1:
            layouts.append(layout(plan.vocab, sw))
        changes = sum(a != b for a, b in zip(layouts, layouts[1:]))
        per_mb += changes * self.relayout(sw, mb)
        per_mb += ((stage > 0) + (stage < pp - 1)) * self.p2p(pp, sw, mb)
        return per_mb, per_iter, persistent + transient

    def evaluate(self, plan: Plan) -> Prediction:
        per_mb, per_iter, alloc = zip(*(self.stage_costs(plan, i) for i in range(plan.pp_deg)))
        it = pipeline_iteration_time(list(per_mb), list(per_iter), plan.chunks)
        tokens = plan.global_bsz * self.model.seq_length
        return Prediction(it, tokens / it, list(per_mb), list(per_iter), list(alloc),
                          [self.reserved(a) for a in alloc])
