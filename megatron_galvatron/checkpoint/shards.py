"""A stage's parameters under their canonical names, and a full tensor cut into this rank's piece
of it: its TP shard (the parameter's ShardSpec), then its DP shard (the FSDP DTensor placement),
for a parameter and for optimizer state shaped like it alike (the way back, full from pieces, is
model/canonical.py: full_tensor)."""
from typing import List, Tuple

import torch

from megatron_galvatron.model.init import canonical_name
from megatron_galvatron.model.stage import StageModel


def entries(stage: StageModel) -> List[Tuple[str, torch.Tensor, object, object]]:
    """(canonical name, parameter, ParamMeta, TP group) of this stage, in the same order on all
    of the stage's ranks (the collectives of a save rely on it)."""
    tp_group = stage.param_tp_groups()
    out = []
    for name, p in stage.named_parameters():
        cname = canonical_name(name)
        out.append((cname, p, stage.param_meta[cname], tp_group[name]))
    return out


def is_tied_copy(stage: StageModel, name: str) -> bool:
    """The last stage's copy of a tied embedding (the first stage saves it)."""
    return (name == "vocab.word_embeddings.weight" and stage.cfg.tie_embeddings and stage.plan.pp_deg > 1
            and not stage.ps.is_first_stage)


def local_piece(full_tensor: torch.Tensor, meta, p: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a full tensor: its TP shard, then its DP shard when p is a DTensor."""
    shard = meta.shard_spec.shard(full_tensor, meta.tp_rank, meta.tp_size).to(p.device, p.dtype)
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(shard, p.device_mesh, p.placements, src_data_rank=None)
    return shard.clone()
