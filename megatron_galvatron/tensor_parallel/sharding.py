"""How a tensor-parallel shard relates to the full (canonical, plan-independent) parameter.

A parameter is split along ``dim`` into ``tp`` pieces. Fused parameters (QKV, gate+up) are
concatenations of independent blocks, each split separately, so that a shard holds the
matching slice of every block. Vocab-sized parameters are padded with zero rows first.
"""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch


@dataclass(frozen=True)
class ShardSpec:
    """How a TP rank's local tensor is cut from the full one."""

    dim: Optional[int] = None          # None: replicated across the TP group
    blocks: Optional[Tuple[int, ...]] = None  # sizes along dim of independently split blocks
    padded_size: Optional[int] = None  # pad dim to this size with zeros before splitting

    def shard(self, full: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
        if self.dim is None or tp == 1 and self.padded_size is None:
            return full
        if self.padded_size is not None and self.padded_size != full.shape[self.dim]:
            pad_shape = list(full.shape)
            pad_shape[self.dim] = self.padded_size - full.shape[self.dim]
            full = torch.cat([full, full.new_zeros(pad_shape)], dim=self.dim)
        blocks = self.blocks or (full.shape[self.dim],)
        parts = []
        for block in full.split(list(blocks), dim=self.dim):
            if block.shape[self.dim] % tp:
                raise ValueError(f"block of size {block.shape[self.dim]} does not split over tp={tp}")
            parts.append(block.chunk(tp, dim=self.dim)[rank])
        return torch.cat(parts, dim=self.dim).contiguous()

    def unshard(self, shards: List[torch.Tensor], full_size: Optional[int] = None) -> torch.Tensor:
        """Inverse of shard over all ranks; ``full_size`` strips vocab padding."""
        if self.dim is None:
            return shards[0]
        tp = len(shards)
        blocks = self.blocks or (shards[0].shape[self.dim] * tp,)
        local_blocks = [b // tp for b in blocks]
        per_rank = [s.split(local_blocks, dim=self.dim) for s in shards]
        full = torch.cat([torch.cat([pr[b] for pr in per_rank], dim=self.dim) for b in range(len(blocks))],
                         dim=self.dim)
        if full_size is not None:
            full = full.narrow(self.dim, 0, full_size)
        return full


@dataclass(frozen=True)
class ParamSpec:
    """What a module declares about one of its parameters when it creates it."""

    shard_spec: ShardSpec
    full_shape: Tuple[int, ...]
    # Replicated across the TP group but fed sequence-sharded inputs: gradients are partial
    # per TP rank and are summed over the TP group after backward.
    sequence_parallel: bool = False
