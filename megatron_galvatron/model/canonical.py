"""Full (plan-independent) tensors gathered from a distributed stage model.

The canonical form of a parameter is its unsharded, unpadded tensor under its module path
(``layers.3.attention.qkv.weight``). Gathering undoes data-parallel sharding (FSDP DTensor)
and tensor-parallel sharding (ShardSpec); every rank of a stage must call these together,
in the same order.
"""
from typing import Dict, Optional

import torch
import torch.distributed as dist

from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.tensor_parallel.mappings import all_gather_dim0


def _dp_full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _tp_groups(stage: StageModel):
    return {f"{u.name}.{name}": u.groups.tp_group for u in stage.units() for name, _ in u.module.named_parameters()}


@torch.no_grad()
def gather_stage(stage: StageModel, grads: bool = False) -> Dict[str, torch.Tensor]:
    """This stage's parameters (or gradients) as full fp32 CPU tensors, on every rank of the stage."""
    groups = _tp_groups(stage)
    out = {}
    for name, p in stage.named_parameters():
        t = p.grad if grads else p
        if t is None:
            t = torch.zeros_like(p)
        local = _dp_full(t.detach()).float()
        meta = stage.param_meta[name]
        if meta.shard_spec.dim is None or meta.tp_size == 1 and meta.shard_spec.padded_size is None:
            full = local
        else:
            d = meta.shard_spec.dim
            gathered = all_gather_dim0(local.movedim(d, 0).contiguous(), groups[name])
            shards = [s.movedim(0, d) for s in gathered.chunk(meta.tp_size, dim=0)]
            full = meta.shard_spec.unshard(shards, full_size=meta.full_shape[d])
        out[name] = full.cpu().clone()
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

