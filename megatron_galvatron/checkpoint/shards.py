"""A stage's parameters under their canonical names, and the way between a full tensor and this
rank's piece of it: its TP shard (the parameter's ShardSpec), then its DP shard (the FSDP DTensor
placement), for a parameter and for optimizer state shaped like it alike."""
from typing import List, Tuple

import torch

from megatron_galvatron.model.init import canonical_name
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.tensor_parallel.mappings import all_gather_dim0


def entries(stage: StageModel) -> List[Tuple[str, torch.Tensor, object, object]]:
    """(canonical name, parameter, ParamMeta, TP group) of this stage, in the same order on all
    of the stage's ranks (the collectives of a save rely on it)."""
    modules = [(f"layers.{i}.", m) for i, m in stage.layers.items()]
    if stage.vocab is not None:
        modules.append(("vocab.", stage.vocab))
    tp_group = {prefix + n: m.groups.tp_group for prefix, m in modules for n, _ in m.named_parameters()}
    out = []
    for name, p in stage.named_parameters():
        cname = canonical_name(name)
        out.append((cname, p, stage.param_meta[cname], tp_group[name]))
    return out


def is_tied_copy(stage: StageModel, name: str) -> bool:
    """The last stage's copy of a tied embedding (the first stage saves it)."""
    return (name == "vocab.word_embeddings.weight" and stage.cfg.tie_embeddings and stage.plan.pp_deg > 1
            and not stage.ps.is_first_stage)


def full(t: torch.Tensor, meta, tp_group) -> torch.Tensor:
    """The full, unpadded CPU tensor of a parameter (or of optimizer state shaped like it).
    Collective over the parameter's DP group (DTensor) and TP group."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    t = t.detach()
    spec = meta.shard_spec
    if t.ndim == 0 or spec.dim is None or meta.tp_size == 1 and spec.padded_size is None:
        return t.to("cpu", copy=True)
    d = spec.dim
    gathered = all_gather_dim0(t.movedim(d, 0).contiguous(), tp_group)
    shards = [s.movedim(0, d) for s in gathered.chunk(meta.tp_size, dim=0)]
    return spec.unshard(shards, full_size=meta.full_shape[d]).to("cpu", copy=True).contiguous()


def local_piece(full_tensor: torch.Tensor, meta, p: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a full tensor: its TP shard, then its DP shard when p is a DTensor."""
    shard = meta.shard_spec.shard(full_tensor, meta.tp_rank, meta.tp_size).to(p.device, p.dtype)
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(shard, p.device_mesh, p.placements, src_data_rank=None)
    return shard.clone()
