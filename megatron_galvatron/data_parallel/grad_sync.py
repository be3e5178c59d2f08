"""Everything between the last backward and the optimizer step that needs communication:
finishing DP reductions, summing sequence-parallel partial gradients over the TP group,
summing the tied word embedding across first and last stage, and the global gradient norm."""
from typing import List, Tuple

import torch
import torch.distributed as dist


def local_grad(p: torch.Tensor):
    g = p.grad
    if g is None:
        return None
    return g.to_local() if hasattr(g, "to_local") else g


def all_reduce_coalesced(tensors: List[torch.Tensor], group) -> None:
    if not tensors or group is None:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def sync_sequence_parallel_grads(params_and_groups) -> None:
    """Parameters replicated over TP but fed sequence shards hold partial gradients: sum them."""
    for params, group in params_and_groups:
        grads = [local_grad(p) for p in params]
        all_reduce_coalesced([g for g in grads if g is not None], group)


def global_grad_norm(params_with_factor: List[Tuple[torch.Tensor, float]], group) -> torch.Tensor:
    """L2 norm of the full gradient: each local shard's square sum is divided by how many ranks
    hold an identical copy of it, then summed over the world."""
    device = params_with_factor[0][0].device if params_with_factor else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float32, device=device)
    by_factor = {}
    for p, factor in params_with_factor:
        g = local_grad(p)
        if g is not None:
            by_factor.setdefault(factor, []).append(g)
    for factor, grads in by_factor.items():  # a few multi-tensor kernels instead of one per parameter
        norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
        total += torch.stack(norms).pow(2).sum() / factor
    if group is not None:
        dist.all_reduce(total, group=group)
    return total.sqrt()


def clip_grads_(params_with_factor: List[Tuple[torch.Tensor, float]], max_norm: float, group) -> torch.Tensor:
    norm = global_grad_norm(params_with_factor, group)
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # no host sync: always multiply
        grads = [local_grad(p) for p, _ in params_with_factor]
        grads = [g for g in grads if g is not None]
        if grads:
            torch._foreach_mul_(grads, coef)
    return norm
