"""torchao float8 training for the baselines, as torchtitan applies it: every nn.Linear inside
the transformer blocks becomes a Float8Linear with the tensorwise recipe (dynamic per-tensor
scales); the embedding and the LM head stay in high precision. torchao is optional: only an
fp8 baseline needs it.

On CUDA the fp8 matmul (torch._scaled_mm) needs every linear's input and output features
divisible by 16; on CPU torchao emulates the fp8 casts and matmul (``emulate=True``), so the
numerics are those of fp8 while the shapes are free.
"""
from types import ModuleType
from typing import Iterable

import torch
from torch import nn

from megatron_galvatron.errors import UserError
from megatron_galvatron.fp8.library import float8


def import_float8() -> ModuleType:
    """torchao.float8, or a UserError naming the package to install."""
    return float8("fp8 baselines")


def convert_blocks(model: nn.Module, blocks: Iterable[nn.Module], device: torch.device, fsdp: bool) -> None:
    """Swap the nn.Linear modules inside ``blocks`` (submodules of ``model``) for Float8Linear.
    With ``fsdp`` the weights are all-gathered in fp8, and their scales must be refreshed after
    each optimizer step (see ``precompute_scales_after_step``)."""
    f8 = import_float8()
    inside = {id(m) for b in blocks for m in b.modules()}
    linears = {name: m for name, m in model.named_modules() if type(m) is nn.Linear and id(m) in inside}
    emulate = device.type != "cuda"
    if not emulate:
        odd = [n for n, m in linears.items() if m.in_features % 16 or m.out_features % 16]
        if odd:
            raise UserError(f"fp8 on CUDA needs linear dimensions divisible by 16; {odd[0]} is "
                            f"{linears[odd[0]].in_features} -> {linears[odd[0]].out_features}")
    config = f8.Float8LinearConfig(enable_fsdp_float8_all_gather=fsdp, emulate=emulate)
    f8.convert_to_float8_training(model, config=config, module_filter_fn=lambda m, fqn: fqn in linears)


def precompute_scales_after_step(opt: torch.optim.Optimizer, model: nn.Module) -> None:
    """After each step, compute the fp8 scales of all sharded weights in one all-reduce, instead
    of one per weight at its next all-gather (torchao's fp8 all-gather with FSDP2)."""
    f8 = import_float8()
    opt.register_step_post_hook(lambda *_: f8.precompute_float8_dynamic_scale_for_fsdp(model))
