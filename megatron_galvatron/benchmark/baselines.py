"""Plain PyTorch baselines: torch DDP (bf16 autocast over fp32 parameters), FSDP2
(fully_shard per block and the root, bf16 parameters, fp32 gradient reduction), and the
model alone on one GPU (bf16 autocast, no data-parallel wrapper).

A baseline is named ``ddp``, ``fsdp2`` or ``plain`` (one rank only) with optional modifiers
joined by ``+``, e.g. ``fsdp2+compile+fp8``:
  ckpt      activation checkpointing of every block
  compile   torch.compile of every block
  fp8       torchao float8 training of the blocks' linears, tensorwise scales (benchmark/float8.py);
            with fsdp2 the weights are all-gathered in fp8. Needs torchao.
  ourmodel  this package's GPT built for a single rank (its fused cross entropy, [s, b]
            activations, and bf16 compute copies) instead of the plain PyTorch GPT; only
            the parallelisation then differs from a plan
The default model is benchmark/plain_gpt.py, the GPT a user would write in plain PyTorch.
"""
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from megatron_galvatron.benchmark import float8
from megatron_galvatron.benchmark.plain_gpt import PlainGPT
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.parallelize import apply_activation_checkpointing
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.parallel_state import ParallelState
from megatron_galvatron.plan import uniform

KINDS = ("ddp", "fsdp2", "plain")
MODIFIERS = ("ckpt", "compile", "fp8", "ourmodel")


@dataclass(frozen=True)
class BaselineSpec:
    kind: str
    checkpoint: bool = False
    compile: bool = False
    our_model: bool = False
    fp8: bool = False

    @staticmethod
    def parse(name: str, world: int = 1) -> "BaselineSpec":
        """The baseline ``name`` names, checked for a run on ``world`` ranks."""
        kind, *mods = name.split("+")
        if kind not in KINDS or set(mods) - set(MODIFIERS):
            raise UserError(f"--baselines {name!r}: use {', '.join(KINDS)}, optionally with +{' +'.join(MODIFIERS)}")
        if kind == "plain" and world > 1:
            raise UserError(f"--baselines {name!r}: plain runs on one GPU, this run has {world} ranks; "
                            f"use ddp or fsdp2, or launch it on one rank")
        spec = BaselineSpec(kind, "ckpt" in mods, "compile" in mods, "ourmodel" in mods, "fp8" in mods)
        if spec.fp8 and spec.our_model:
            # torchao swaps nn.Linear; this package's TP linears take fp8 from a plan instead
            raise UserError(f"--baselines {name!r}: +fp8 converts the nn.Linear layers of benchmark/plain_gpt.py, "
                            f"not +ourmodel; for this package's model benchmark a plan with fp8 layers")
        if spec.fp8:
            float8.import_float8()
        return spec


class _Ours(torch.nn.Module):
    """This package's model on one rank: tokens [b, s] -> mean loss."""

    def __init__(self, cfg: GPTConfig, device, seed: int, checkpoint: bool):
        super().__init__()
        plan = uniform(1, cfg.num_layers, checkpoint=checkpoint, global_bsz=1, chunks=1)
        ps = ParallelState(plan, 0, 1, device)  # single-rank groups: no collectives inside the model
        self.stage = StageModel(cfg, plan, ps, seed)
        apply_activation_checkpointing(self.stage.units())

    def forward(self, tokens, labels):
        return self.stage(tokens.t(), labels.t()).float().mean()

    def block_modules(self):
        return list(self.stage.layers.values())


class _Plain(PlainGPT):
    def __init__(self, cfg: GPTConfig, device, seed: int, checkpoint: bool):
        torch.manual_seed(seed)
        super().__init__(cfg, device, checkpoint)
        for name, p in self.named_parameters():  # GPT-2 style: N(0, std) weights, zero biases, unit norms
            if name.endswith("bias"):
                torch.nn.init.zeros_(p)
            elif p.dim() > 1:
                torch.nn.init.normal_(p, std=cfg.init_std)

    def block_modules(self):
        return list(self.blocks)


def build_baseline(spec: BaselineSpec, cfg: GPTConfig, device, seed: int, bf16: bool):
    model = (_Ours if spec.our_model else _Plain)(cfg, device, seed, spec.checkpoint)
    if spec.fp8:  # before compile, so that the compiled blocks trace the fp8 casts
        float8.convert_blocks(model, model.block_modules(), device, fsdp=spec.kind == "fsdp2")
    if spec.compile:
        for block in model.block_modules():
            block.compile()
    if spec.kind == "plain":
        wrapped, autocast = model, bf16
    elif spec.kind == "ddp":
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          bucket_cap_mb=100, gradient_as_bucket_view=True)
        autocast = bf16
    else:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for block in model.block_modules():
            fully_shard(block, mp_policy=mp)
        wrapped = fully_shard(model, mp_policy=mp)
        autocast = False  # parameters are already bf16 for compute
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-4, weight_decay=0.01, **fused)
    if spec.fp8 and spec.kind == "fsdp2":
        float8.precompute_scales_after_step(opt, wrapped)
    return wrapped, opt, autocast


def baseline_step(model, opt, tokens, labels, autocast: bool, device, chunks: int = 1) -> torch.Tensor:
    """One optimizer step over ``chunks`` micro-batches (rows of tokens split evenly), gradients
    synchronised only on the last, as a user accumulates with DDP.no_sync / FSDP2."""
    ddp = isinstance(model, DistributedDataParallel)
    total = torch.zeros((), device=device)
    for i, (t, l) in enumerate(zip(tokens.chunk(chunks), labels.chunk(chunks))):
        last = i == chunks - 1
        if not ddp and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(last)
        with (model.no_sync() if ddp and not last else nullcontext()):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(t, l) / chunks
            loss.backward()
        total += loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total
