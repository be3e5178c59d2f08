"""Full (plan-independent) tensors gathered from a distributed stage model.

The canonical form of a parameter is its unsharded, unpadded tensor under its module path
(``layers.3.attention.qkv.weight``). Gathering undoes data-parallel sharding (FSDP DTensor)
and tensor-parallel sharding (ShardSpec); every rank of a stage must call these together,
in the same order.
"""
from typing import Dict, Optional

import torch
import torch.distributed as dist

from megatron_galvatron.model.param_facts import ParamMeta
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.tensor_parallel.mappings import all_gather_dim0


def host_copy(t: torch.Tensor) -> torch.Tensor:
    return t.to("cpu", copy=True)


def full_tensor(t: torch.Tensor, meta: ParamMeta, tp_group, to_host=host_copy) -> torch.Tensor:
    """The full, unpadded CPU tensor of a parameter (or of a gradient or optimizer state shaped
    like it), made by to_host from the full device tensor. Collective over the parameter's DP
    group (DTensor) and TP group."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    t = t.detach()
    spec = meta.shard_spec
    if t.ndim == 0 or spec.dim is None or meta.tp_size == 1 and spec.padded_size is None:
        return to_host(t)
    d = spec.dim
    gathered = all_gather_dim0(t.movedim(d, 0).contiguous(), tp_group)
    shards = [s.movedim(0, d) for s in gathered.chunk(meta.tp_size, dim=0)]
    return to_host(spec.unshard(shards, full_size=meta.full_shape[d]).contiguous())


@torch.no_grad()
def gather_stage(stage: StageModel, grads: bool = False) -> Dict[str, torch.Tensor]:
    """This stage's parameters (or gradients) as full fp32 CPU tensors, on every rank of the stage."""
    groups = stage.param_tp_groups()
    out = {}
    for name, p in stage.named_parameters():
        t = p.grad if grads else p
        if t is None:
            t = torch.zeros_like(p)
        out[name] = full_tensor(t, stage.param_meta[name], groups[name]).float()
    return out


def gather_model(stage: StageModel, grads: bool = False, group: Optional[dist.ProcessGroup] = None
                 ) -> Dict[str, torch.Tensor]:
    """All stages' full tensors on every rank (small models: tests, conversion)."""
    mine = gather_stage(stage, grads)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, mine if stage.ps.local_idx == 0 else {}, group=group)
    merged = {}
    for part in parts:
        merged.update(part)
    return merged

