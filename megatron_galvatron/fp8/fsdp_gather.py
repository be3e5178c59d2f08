"""ZeRO-3 layers whose linears cast tensorwise all-gather those weights in float8: one byte per
element where FSDP2 would gather the compute dtype's two (bf16) or four.

Each such weight becomes a ``Fp8GatheredWeight`` before FSDP2 shards it: the fp32 master shard
wrapped in a tensor subclass carrying FSDP2's all-gather hooks (torchao's float8 all-gather works
the same way). Before a gather the hook casts the local shard to float8 with the weight's one
tensorwise scale and hands FSDP the bytes (as uint8: gloo moves no float8 dtype, and the gather
buffer of a unit mixing dtypes is uint8 anyway); after it, the gathered bytes and the scale form
the unsharded parameter as a torchao ``Float8TrainingTensor``, which the float8 matmul takes as it
is (fp8/linear.py), forward and, re-gathered in float8, backward. Gradients stay in the compute
dtype and are reduce-scattered as before; masters, optimizer and checkpoints see fp32 tensors.

The float8 bytes and scale are the bf16 gather path's: the shard is first rounded to the compute
dtype FSDP would gather, and its scale is ``Fp8Matmul.scale`` of the shard, whose amax is reduced
over the stage, which holds every FSDP shard of every TP shard of the weight, so it is the
gathered weight's amax, as the matmul's own cast of a bf16-gathered weight takes it. The cast is
pointwise, so casting shards and gathering gives the gathered cast.

The cast is made once per value of the master shard (every write to the weight, through any
of the views FSDP2 keeps of it, counts: the optimizer step, a checkpoint load) and kept: the
micro-batches of a step, their backward re-gathers and activation recomputation gather the same
bytes, and the scale's all-reduce runs once per step. Every rank of the stage changes its shards at the same points, so all of them
recast, and join that all-reduce, together.

Rowwise weights stay on the compute-dtype gather: their per-row scales run along each matmul's
reduction dim (K forward, N for the input gradient), so one cast of the weight per gather would
not serve both of its matmuls (torchao's float8 all-gather is tensorwise only too).
"""
from typing import Optional

import torch
import torch.utils._pytree as pytree
from torch import nn

from megatron_galvatron.fp8.linear import Fp8Matmul

aten = torch.ops.aten
# What FSDP2 does to a parameter while sharding it (chunk, pad with new_zeros, narrow, copy_,
# view) and to its shard (detach, as_strided) must keep the hooks; every other op (the optimizer,
# a checkpoint's gather or load) computes on, and returns, plain tensors.
_KEEP = {aten.detach.default, aten.alias.default, aten.split.Tensor, aten.slice.Tensor, aten.new_zeros.default,
         aten.copy_.default, aten.view.default, aten.as_strided.default, aten.empty_like.default}


class Fp8GatheredWeight(torch.Tensor):
    """An fp32 (master) weight that FSDP2 all-gathers as float8 bytes under a tensorwise scale."""

    @staticmethod
    def __new__(cls, tensor: torch.Tensor, f: Fp8Matmul, writes: "Optional[_Writes]" = None):
        return torch.Tensor._make_wrapper_subclass(cls, tensor.size(), strides=tensor.stride(),
                                                   storage_offset=tensor.storage_offset(), dtype=tensor.dtype,
                                                   layout=tensor.layout, device=tensor.device,
                                                   requires_grad=tensor.requires_grad)

    def __init__(self, tensor: torch.Tensor, f: Fp8Matmul, writes: "Optional[_Writes]" = None):
        self._tensor, self._f = tensor, f
        self._writes = _Writes() if writes is None else writes  # shared by every view of this weight
        self._cast = None  # (writes when cast, float8 shard as uint8, scale)

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        first = next(a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, Fp8GatheredWeight))
        inner_args, inner_kwargs = pytree.tree_map_only(Fp8GatheredWeight, lambda t: t._tensor, (args, kwargs))
        out = func(*inner_args, **inner_kwargs)
        _count_writes(func, args, kwargs)
        if func not in _KEEP:
            return out
        return pytree.tree_map_only(torch.Tensor, lambda t: Fp8GatheredWeight(t, first._f, first._writes), out)

    def __tensor_flatten__(self):
        return ["_tensor"], (self._f, self._writes)

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        return Fp8GatheredWeight(inner["_tensor"], *ctx)

    def __repr__(self):
        return f"Fp8GatheredWeight({self._tensor})"

    def _float8_shard(self, dtype: torch.dtype):
        """This shard cast to float8 (uint8 bytes) and the weight's scale, cast again only when
        the master shard has changed since the last cast."""
        version = self._writes.count
        if self._cast is None or self._cast[0] != version:
            from torchao.float8.float8_training_tensor import hp_tensor_and_scale_to_float8
            f = self._f
            c = f.config.cast_config_weight
            shard = self._tensor.to(dtype)  # what the compute-dtype gather would carry
            scale = f.scale(shard, c, 0, None)
            data = hp_tensor_and_scale_to_float8(shard, scale, c.target_dtype)._data
            self._cast = (version, data.view(torch.uint8), scale)
        return self._cast[1], self._cast[2]

    @torch.no_grad()
    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        data, scale = self._float8_shard(mp_policy.param_dtype or self.dtype)
        rows = -(-outer_size[0] // mesh.size())  # FSDP2 pads every shard to the first one's rows
        if data.size(0) < rows:
            data = torch.cat([data, data.new_zeros(rows - data.size(0), *data.shape[1:])])
        return (data,), (scale,)

    @torch.no_grad()
    def fsdp_post_all_gather(self, outputs, metadata, param_dtype: torch.dtype, *,
                             out: Optional[torch.Tensor] = None):
        from torchao.float8.float8_training_tensor import Float8TrainingTensor, GemmInputRole
        (data,), (scale,) = outputs, metadata
        if out is not None:  # gathered again into the same bytes: only the scale may be new
            out._scale = scale
            return None
        f = self._f
        weight = Float8TrainingTensor(data.view(f.config.cast_config_weight.target_dtype), scale, param_dtype,
                                      f.mm, GemmInputRole.WEIGHT)
        return weight, ()  # its bytes are FSDP's all-gather output, which FSDP frees itself


class _Writes:
    """How many times a weight has been written to, through any of its views. Tensor version
    counters cannot say: the ops run on the plain tensor below autograd, where no counter moves,
    views made there share none, and foreach ops (the optimizer's) move not even the wrapper's."""

    def __init__(self):
        self.count = 0


def _count_writes(func, args, kwargs) -> None:
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = kwargs.get(arg.name) if arg.kwarg_only or i >= len(args) else args[i]
            for t in pytree.tree_leaves(value):
                if isinstance(t, Fp8GatheredWeight):
                    t._writes.count += 1


def gather_in_fp8(module: nn.Module) -> None:
    """Before FSDP2 shards ``module``: the weights of its tensorwise float8 linears become
    ``Fp8GatheredWeight``s (call only for a ZeRO-3 unit; see the module docstring for rowwise)."""
    from megatron_galvatron.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    for m in module.modules():
        if isinstance(m, (ColumnParallelLinear, RowParallelLinear)) and m.fp8 is not None and m.fp8.tensorwise:
            w = m.weight
            m.weight = nn.Parameter(Fp8GatheredWeight(w.detach(), m.fp8), requires_grad=w.requires_grad)
