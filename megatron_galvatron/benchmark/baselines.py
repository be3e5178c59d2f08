"""Plain PyTorch baselines on the same model: torch DDP, and FSDP2 (fully_shard per block,
bf16 parameters, fp32 gradient reduction). The model is this package's GPT built for a single
rank (no tensor parallelism: plain nn.Linear/SDPA/embedding compute), so only the
parallelisation differs from a searched plan."""
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.parallel_state import ParallelState
from megatron_galvatron.plan import uniform


class _Local(torch.nn.Module):
    """The whole model on one rank: tokens [b, s] -> mean loss."""

    def __init__(self, cfg: GPTConfig, device, seed: int, checkpoint: bool):
        super().__init__()
        plan = uniform(1, cfg.num_layers, checkpoint=checkpoint, global_bsz=1, chunks=1)
        ps = ParallelState(plan, 0, 1, device)  # single-rank groups: no collectives inside the model
        self.stage = StageModel(cfg, plan, ps, seed)

    def forward(self, tokens, labels):
        return self.stage(tokens.t(), labels.t()).float().mean()


def build_baseline(kind: str, cfg: GPTConfig, device, seed: int, bf16: bool, checkpoint: bool):
    model = _Local(cfg, device, seed, checkpoint)
    if kind == "ddp":
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          bucket_cap_mb=100, gradient_as_bucket_view=True)
        autocast = bf16
    elif kind == "fsdp2":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for layer in model.stage.layers.values():
            fully_shard(layer, mp_policy=mp)
        wrapped = fully_shard(model, mp_policy=mp)
        autocast = False  # parameters are already bf16 for compute
    else:
        raise ValueError(kind)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-4, weight_decay=0.01, **fused)
    return wrapped, opt, autocast


def baseline_step(model, opt, tokens, labels, autocast: bool, device) -> torch.Tensor:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(tokens, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

