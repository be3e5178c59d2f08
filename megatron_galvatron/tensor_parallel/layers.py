"""Tensor-parallel layers (Megatron style) that take their TP group explicitly.

Weights are allocated as local shards. Each module records in ``param_specs`` how each of its
parameters is cut from the full tensor (model/param_facts.py collects them), so that every
layout starts from, and checkpoints back to, the same full weights.
"""
import math
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron_galvatron.tensor_parallel.mappings import (
    copy_to_tp,
    gather_from_sp,
    reduce_from_tp,
    reduce_scatter_to_sp,
)
from megatron_galvatron.tensor_parallel.sharding import ParamSpec, ShardSpec


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def add_param(module: nn.Module, name: str, local_shape, full_shape, device, dtype,
              spec: ShardSpec = ShardSpec(), sequence_parallel: bool = False) -> None:
    """Register an uninitialised parameter on ``module`` and record how it is cut from the full
    tensor; ``spec`` defaults to replicated (every TP rank holds it whole)."""
    module.register_parameter(name, nn.Parameter(torch.empty(local_shape, device=device, dtype=dtype)))
    if "param_specs" not in module.__dict__:
        module.param_specs = {}
    module.param_specs[name] = ParamSpec(spec, tuple(full_shape), sequence_parallel)


class ColumnParallelLinear(nn.Module):
    """Y = X A^T + b with A split by output rows. Input replicated (or sequence-sharded if sp)."""

    def __init__(self, in_features: int, out_features: int, group, bias: bool = True,
                 sequence_parallel: bool = False, blocks: Optional[Tuple[int, ...]] = None,
                 unpadded_out: Optional[int] = None, device=None, dtype=torch.float32):
        super().__init__()
        tp = group_size(group)
        if out_features % tp:
            raise ValueError(f"output size {out_features} not divisible by tp={tp}")
        self.group, self.sequence_parallel = group, sequence_parallel
        self.fp8 = None  # float8 matmul settings (fp8/linear.py: Fp8Matmul), set by the builder
        padded = out_features if unpadded_out is not None else None
        full_out = unpadded_out if unpadded_out is not None else out_features
        spec = ShardSpec(dim=0, blocks=blocks, padded_size=padded)
        add_param(self, "weight", (out_features // tp, in_features), (full_out, in_features), device, dtype, spec)
        if bias:
            add_param(self, "bias", (out_features // tp,), (full_out,), device, dtype, spec)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.sequence_parallel:
            x = gather_from_sp(x, self.group)
        else:
            x = copy_to_tp(x, self.group)
        return _linear(x, self.weight if weight is None else weight, self.bias, self.fp8)


class RowParallelLinear(nn.Module):
    """Y = X A^T + b with A split by input columns; input is already TP-split."""

    def __init__(self, in_features: int, out_features: int, group, bias: bool = True,
                 sequence_parallel: bool = False, device=None, dtype=torch.float32):
        super().__init__()
        tp = group_size(group)
        if in_features % tp:
            raise ValueError(f"input size {in_features} not divisible by tp={tp}")
        self.group, self.sequence_parallel = group, sequence_parallel
        self.fp8 = None
        add_param(self, "weight", (out_features, in_features // tp), (out_features, in_features), device, dtype,
                  ShardSpec(dim=1))
        if bias:
            add_param(self, "bias", (out_features,), (out_features,), device, dtype,
                      sequence_parallel=sequence_parallel)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _linear(x, self.weight, None, self.fp8)
        y = reduce_scatter_to_sp(y, self.group) if self.sequence_parallel else reduce_from_tp(y, self.group)
        return y + self.bias if self.bias is not None else y


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], fp8) -> torch.Tensor:
    if fp8 is None:
        return F.linear(x, weight, bias)
    from megatron_galvatron.fp8.linear import fp8_linear
    y = fp8_linear(x, weight, fp8)
    return y if bias is None else y + bias


def pad_vocab(vocab_size: int, divisible_by: int, tp: int) -> int:
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


class VocabParallelEmbedding(nn.Module):
    """Embedding table split by vocab rows; output is the all-reduced (or reduce-scattered) sum."""

    def __init__(self, vocab_size: int, padded_vocab_size: int, hidden: int, group,
                 sequence_parallel: bool = False, device=None, dtype=torch.float32):
        super().__init__()
        tp = group_size(group)
        self.group, self.sequence_parallel = group, sequence_parallel
        self.per_rank = padded_vocab_size // tp
        self.vocab_start = group_rank(group) * self.per_rank
        add_param(self, "weight", (self.per_rank, hidden), (vocab_size, hidden), device, dtype,
                  ShardSpec(dim=0, padded_size=padded_vocab_size))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if group_size(self.group) == 1:
            out = F.embedding(tokens, self.weight)
        else:
            local = tokens - self.vocab_start
            outside = (local < 0) | (local >= self.per_rank)
            out = F.embedding(local.masked_fill(outside, 0), self.weight)
            out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sp(out, self.group)
        return reduce_from_tp(out, self.group)
