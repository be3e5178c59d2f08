"""A float8 matmul for the tensor-parallel linears: torchao's casts and scaled matmuls, with every
scale computed as the unsharded model computes it.

A dynamic scale is the float8 maximum over the amax of what is cast: of the whole tensor
(tensorwise) or of each row or column (rowwise, torchao's axiswise casts). Under a plan the
tensors are split: weights over the TP group, activations and their gradients over TP and DP,
so a local amax would give every rank, and every layout, other numerics. Each amax is therefore
reduced over exactly the ranks that split what it is taken over; then any plan computes, per
micro-batch, what one device computes on the whole micro-batch.

For ``x [tokens, K] @ w.t()`` with ``w [N, K]``:
  tensorwise  every cast's amax over the stage (the ranks that hold parts of any of them);
  rowwise     along K (forward casts): over the ranks splitting K (row-parallel: TP);
              along N (grad input casts): over the ranks splitting N (column-parallel: TP);
              along tokens (grad weight casts): over the ranks splitting tokens (DP).
"""
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.distributed as dist

from megatron_galvatron.fp8.library import float8


@dataclass(frozen=True)
class Fp8Matmul:
    """How one linear casts and multiplies: torchao's recipe config, its matmul config, and the
    groups each amax is reduced over (None: this rank holds all of it)."""

    config: object
    mm: object
    stage: Optional[dist.ProcessGroup]
    k: Optional[dist.ProcessGroup]
    n: Optional[dist.ProcessGroup]
    tokens: Optional[dist.ProcessGroup]

    @property
    def tensorwise(self) -> bool:
        return self.config.cast_config_input.scaling_granularity.value == "tensorwise"

    @staticmethod
    def build(recipe: str, device: torch.device, row_parallel: bool, tp_group, dp_group, stage_group
              ) -> "Fp8Matmul":
        f8 = float8()
        from torchao.float8.float8_training_tensor import LinearMMConfig, ScaledMMConfig
        # No float8 matmul kernel on CPU: torchao emulates it (same casts, fp32 matmul).
        config = replace(f8.Float8LinearConfig.from_recipe_name(recipe), emulate=device.type != "cuda")
        mm = LinearMMConfig(*(ScaledMMConfig(config.emulate, g.use_fast_accum, False, config.pad_inner_dim)
                              for g in (config.gemm_config_output, config.gemm_config_grad_input,
                                        config.gemm_config_grad_weight)))
        return Fp8Matmul(config, mm, _multi(stage_group), _multi(tp_group) if row_parallel else None,
                         None if row_parallel else _multi(tp_group), _multi(dp_group))

    def scale(self, t: torch.Tensor, cast_config, axis: int, group) -> torch.Tensor:
        """The dynamic scale of t's cast, its amax reduced as the module docstring says; ``axis``:
        the dim each rowwise amax runs along. A tensorwise t may be any piece of the tensor the
        stage splits (an FSDP shard, fp8/fsdp_gather.py), even an empty one."""
        from torchao.float8.float8_utils import amax_to_scale
        if self.tensorwise:
            amax, group = (t.abs().max() if t.numel() else t.new_zeros(())).float(), self.stage
        else:
            amax = t.abs().amax(dim=axis, keepdim=True).float()
        if group is not None:
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=group)
        return amax_to_scale(amax, cast_config.target_dtype, self.config.round_scales_to_power_of_2)

    def cast(self, t: torch.Tensor, cast_config, role, axis: int, group):
        """t in float8 as ``cast_config`` says; ``axis``: the dim each rowwise amax runs along."""
        from torchao.float8.float8_training_tensor import hp_tensor_and_scale_to_float8
        return hp_tensor_and_scale_to_float8(t, self.scale(t, cast_config, axis, group), cast_config.target_dtype,
                                             self.mm, role, None if self.tensorwise else axis)


def _multi(group) -> Optional[dist.ProcessGroup]:
    return group if group is not None and dist.get_world_size(group) > 1 else None


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, f: Fp8Matmul) -> torch.Tensor:
        from torchao.float8.float8_training_tensor import Float8TrainingTensor
        from torchao.float8.float8_training_tensor import GemmInputRole as R
        c = f.config
        x2 = x.reshape(-1, x.shape[-1])
        wt = weight.t()
        xq = f.cast(x2, c.cast_config_input, R.INPUT, -1, f.k)
        # A ZeRO-3 tensorwise weight arrives already cast: FSDP gathered it in float8.
        ctx.gathered = isinstance(weight, Float8TrainingTensor)
        wq = wt if ctx.gathered else f.cast(wt, c.cast_config_weight, R.WEIGHT, 0, f.k)
        ctx.f = f
        if f.tensorwise:
            # One scale per tensor, so the backward's casts are the forward's: keep the float8
            # input (half the bytes of bf16) and the weight's scale, and cast the weight again
            # from the parameter in backward rather than hold a float8 copy of it per micro-batch
            # (a weight gathered in float8 is gathered again, in float8, for the backward).
            ctx.save_for_backward(xq, wt, wq._scale)
        else:
            ctx.save_for_backward(x2, wt)
        y = torch.mm(xq, wq)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        from torchao.float8.float8_training_tensor import GemmInputRole as R
        from torchao.float8.float8_training_tensor import hp_tensor_and_scale_to_float8
        f = ctx.f
        c = f.config
        g2 = gy.reshape(-1, gy.shape[-1])
        gq = f.cast(g2, c.cast_config_grad_output, R.GRAD_OUTPUT, -1, f.n)
        if f.tensorwise:
            xq, wt, w_scale = ctx.saved_tensors
            wq = wt if ctx.gathered else hp_tensor_and_scale_to_float8(
                wt, w_scale, c.cast_config_weight.target_dtype, f.mm, R.WEIGHT)
            gq_w = gq
        else:
            x2, wt = ctx.saved_tensors
            wq = f.cast(wt, c.cast_config_weight_for_grad_input, R.WEIGHT, -1, f.n)
            gq_w = f.cast(g2, c.cast_config_grad_output_for_grad_weight, R.GRAD_OUTPUT, 0, f.tokens)
            xq = f.cast(x2, c.cast_config_input_for_grad_weight, R.INPUT, 0, f.tokens)
        gx = torch.mm(gq, wq.t())
        gw = torch.mm(gq_w.t(), xq)
        return gx.reshape(*gy.shape[:-1], gx.shape[-1]), gw, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, f: Fp8Matmul) -> torch.Tensor:
    """x @ weight.t() with float8 operands (no bias)."""
    return _Fp8Linear.apply(x, weight, f)
