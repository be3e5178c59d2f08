"""Deterministic initialisation: the same seed gives the same full weights under every plan.

Each parameter's full (unsharded, unpadded) tensor is drawn from a generator seeded by the
global seed and the parameter's canonical name, then the local shard is cut from it.
"""
import math
import zlib

from typing import Dict

import torch
from torch import nn

from megatron_galvatron.model.param_facts import ParamMeta

# Output projections of each residual branch get std / sqrt(2 * num_layers), as in GPT-2/Megatron.
_SCALED = ("attention.dense.weight", "mlp.fc2.weight")


def full_init(name: str, shape, std: float, num_layers: int, seed: int, device) -> torch.Tensor:
    device = torch.device(device)
    if name.endswith("norm.weight"):
        return torch.ones(shape, device=device)
    if name.endswith(".bias"):
        return torch.zeros(shape, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63))
    if name.endswith(_SCALED):
        std = std / math.sqrt(2.0 * num_layers)
    return torch.empty(shape, device=device).normal_(0.0, std, generator=gen)


@torch.no_grad()
def init_params_(model: nn.Module, facts: Dict[str, ParamMeta], std: float, num_layers: int, seed: int) -> None:
    """Fill every parameter from its full tensor, cut as its facts (model/param_facts.py) say."""
    for name, p in model.named_parameters():
        m = facts[name]
        full = full_init(canonical_name(name), m.full_shape, std, num_layers, seed, p.device)
        p.copy_(m.shard_spec.shard(full, m.tp_rank, m.tp_size).to(p.dtype))


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes so names match across plans."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")
