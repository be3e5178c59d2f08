"""AdamW over a stage's parameters and the learning-rate schedule."""
import math
from collections import defaultdict
from typing import List

import torch
from torch import nn


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.AdamW:
    """No decay on biases and norms. Parameters are grouped by kind (plain tensor, or DTensor per
    mesh) because the fused/foreach kernels run over one group's list at a time and cannot mix them."""
    groups = defaultdict(list)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mesh = getattr(p, "device_mesh", None)
        key = (id(mesh) if mesh is not None else None, p.ndim >= 2 and not name.endswith("position_embeddings"))
        groups[key].append(p)
    param_groups: List[dict] = []
    for (mesh_key, decay), params in groups.items():
        param_groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0})
    device = next(model.parameters()).device
    kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, **kwargs)


class LRSchedule:
    """Linear warm-up, then cosine / linear decay to min_lr over decay_iters, then flat."""

    def __init__(self, lr: float, min_lr: float, warmup: int, decay_iters: int, style: str):
        self.lr, self.min_lr, self.warmup, self.decay_iters, self.style = lr, min_lr, warmup, decay_iters, style

    def __call__(self, it: int) -> float:
        """Learning rate for iteration it (0-based)."""
        if self.warmup > 0 and it < self.warmup:
            return self.lr * (it + 1) / self.warmup
        if self.style == "constant":
            return self.lr
        span = max(1, self.decay_iters - self.warmup)
        frac = min(1.0, (it - self.warmup) / span)
        if self.style == "linear":
            coef = 1.0 - frac
        else:
            coef = 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.min_lr + coef * (self.lr - self.min_lr)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        lr = self(it)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr
