"""The one builder: applies every per-unit concern the plan names to a built stage.

Over ``StageModel.units()`` (each layer, then the vocab module), in this order:
  1. float8 linears in the layers whose strategy names an ``fp8`` recipe (fp8/linear.py; the
     vocab module stays in the training precision);
  2. activation checkpointing of the layers whose strategy says ``checkpoint``;
  3. torch.compile of every layer when the plan says ``compile`` (after 2, so that a compiled
     layer compiles its own recomputation: a checkpoint around a compiled layer would
     recompute through another graph);
  4. data parallelism on the unit's own DP group: FSDP2 for zero2/zero3, a flat-buffer
     all-reduce bucket for ddp (and for any DP degree of 1); a zero3 unit's tensorwise float8
     weights are gathered in float8 (fp8/fsdp_gather.py). FSDP goes last because it replaces
     the parameters it shards.
The result drives gradient synchronisation for a step and knows which parameters to clip.
"""
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import nn

from megatron_galvatron.data_parallel import fsdp
from megatron_galvatron.data_parallel.ddp import GradBucket
from megatron_galvatron.data_parallel.grad_sync import (
    all_reduce_coalesced,
    clip_grads_,
    local_grad,
    sync_sequence_parallel_grads,
)
from megatron_galvatron.fp8.fsdp_gather import gather_in_fp8
from megatron_galvatron.fp8.linear import Fp8Matmul
from megatron_galvatron.model.activation_checkpoint import checkpoint_module
from megatron_galvatron.model.stage import StageModel, Unit
from megatron_galvatron.plan import Plan
from megatron_galvatron.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


@dataclass
class ParallelModel:
    stage: StageModel
    buckets: List[GradBucket] = field(default_factory=list)
    sharded: List[nn.Module] = field(default_factory=list)
    norm_factors: List[Tuple[nn.Parameter, float]] = field(default_factory=list)
    tied_pair_group: object = None
    prefetch_set: bool = False

    def start_microbatch(self, is_last: bool) -> None:
        for b in self.buckets:
            b.sync_enabled = is_last
        for m in self.sharded:
            fsdp.set_sync(m, is_last)

    @contextmanager
    def compute(self):
        """Where forward and backward run: replicated units swap in bf16 copies of their fp32
        master weights (FSDP units cast on their own)."""
        with ExitStack() as stack:
            for b in self.buckets:
                stack.enter_context(b.compute())
            yield

    def finish_grad_sync(self) -> None:
        for b in self.buckets:
            b.finish()
        if not self.prefetch_set:  # every FSDP root has run once, so each may prefetch another
            _prefetch_neighbours(self.stage, self.sharded)
            self.prefetch_set = True
        sync_sequence_parallel_grads(self._sequence_parallel_params())
        if self.tied_pair_group is not None:
            g = local_grad(self.stage.vocab.word_embeddings.weight)
            all_reduce_coalesced([g], self.tied_pair_group)

    def _sequence_parallel_params(self):
        meta = self.stage.param_meta
        out = []
        for u in self.stage.units():
            params = [p for n, p in u.module.named_parameters() if meta[f"{u.name}.{n}"].sequence_parallel]
            if params:
                out.append((params, u.groups.tp_group))
        return out

    def clip_grads(self, max_norm: float) -> torch.Tensor:
        return clip_grads_(self.norm_factors, max_norm, self.stage.ps.world_group)

    def zero_grad(self) -> None:
        for b in self.buckets:
            b.zero_grad()
        for m in self.sharded:
            for p in m.parameters():
                p.grad = None


def _prefetch_neighbours(stage: StageModel, sharded: List[nn.Module]) -> None:
    """Each layer is its own FSDP root, so nothing prefetches implicitly: ask every sharded
    layer to start gathering the next sharded layer's parameters in forward (the previous
    one's in backward) while it computes."""
    order = [m for m in stage.layers.values() if m in sharded]
    for a, b in zip(order, order[1:]):
        a.set_modules_to_forward_prefetch([b])
        b.set_modules_to_backward_prefetch([a])


def _share_streams(sharded: List[nn.Module]) -> None:
    """One set of FSDP streams for the whole stage, as a single FSDP root would have.

    Every sharded layer is its own FSDP root, and each root makes its own all-gather and
    reduce-scatter streams. The caching allocator keeps a pool per stream, so each layer's
    collective buffers stay reserved in its own pool, usable by no other layer: at LLaMA-7B on
    two GPUs 32 such pools held 18 GB, 6 GB of it free, and the card filled before the
    allocated peak did. Every root is initialised first, because a root's lazy init (at its
    first forward) re-creates the streams of the context it holds, shared or not."""
    try:
        from torch.distributed.fsdp import share_comm_ctx
    except ImportError:  # older torch: each layer keeps its own streams
        return
    if len(sharded) < 2:
        return
    for m in sharded:
        m._get_fsdp_state()._lazy_init()
    share_comm_ctx(sharded)


def apply_fp8(units: List[Unit], device: torch.device) -> None:
    for u in units:
        recipe = getattr(u.strategy, "fp8", None)
        if not recipe:
            continue
        g = u.groups
        column, row = (Fp8Matmul.build(recipe, device, r, g.tp_group, g.dp_group, g.stage_group) for r in (False, True))
        for m in u.module.modules():
            if isinstance(m, ColumnParallelLinear):
                m.fp8 = column
            elif isinstance(m, RowParallelLinear):
                m.fp8 = row


def apply_activation_checkpointing(units: List[Unit]) -> None:
    for u in units:
        if getattr(u.strategy, "checkpoint", False):
            checkpoint_module(u.module, u.module.tracker.generator)


def _grad_copies(stage: StageModel, u: Unit, sharded: bool, tied_across_stages: bool):
    """How many ranks hold an identical copy of each local gradient element of the unit."""
    out = {}
    for name, _ in u.module.named_parameters():
        meta = stage.param_meta[f"{u.name}.{name}"]
        factor = float(meta.tp_size if meta.shard_spec.dim is None else 1)
        if not sharded:
            factor *= u.groups.dp
        if tied_across_stages and name == "word_embeddings.weight":
            factor *= 2
        out[f"{u.name}.{name}"] = factor
    return out


def parallelize(stage: StageModel, plan: Plan, bf16: bool) -> ParallelModel:
    """Apply ``plan`` (the one the stage was built from) to ``stage``, in the order above."""
    if plan is not stage.plan:
        raise ValueError("parallelize: the stage was built from another plan")
    units = stage.units()
    apply_fp8(units, stage.ps.device)
    apply_activation_checkpointing(units)
    if plan.compile:
        for u in units:
            if u.name.startswith("layers."):
                u.module.compile()
    ps = stage.ps
    pm = ParallelModel(stage=stage)
    tied_across_stages = stage.cfg.tie_embeddings and plan.pp_deg > 1 and stage.vocab is not None
    factors = {}
    for u in units:
        sharded = u.groups.dp > 1 and u.strategy.dp_type in ("zero2", "zero3")
        factors.update(_grad_copies(stage, u, sharded, tied_across_stages))
        if sharded:
            methods = ("embed", "head") if u.name == "vocab" else ()
            if u.strategy.dp_type == "zero3":
                gather_in_fp8(u.module)
            fsdp.shard_module(u.module, u.groups.dp_group, ps.device, u.strategy.dp_type, bf16, methods)
            pm.sharded.append(u.module)
        else:
            pm.buckets.append(GradBucket(u.module, u.groups.dp_group, bf16=bf16))
    _share_streams(pm.sharded)
    if tied_across_stages:
        pm.tied_pair_group = ps.group(ps.embedding_ranks)
    # FSDP swaps parameters for DTensor ones, so look them up again by name.
    pm.norm_factors = [(p, factors[name]) for name, p in stage.named_parameters()]
    return pm
