"""Cross entropy over logits split along the vocab across a TP group.

Never gathers the vocab: max, sum-exp and the target logit are reduced over the group.
Nothing of vocab size is saved for backward but the (bf16) logits themselves; the softmax is
recomputed there. On CUDA the elementwise pieces between the collectives are compiled into
single passes over the logits, which are the largest tensor of the step. Columns at or beyond
``true_vocab`` are padding and never receive probability.
"""
import torch
import torch.distributed as dist

from megatron_galvatron.tensor_parallel.layers import group_rank, group_size


def _masked(logits: torch.Tensor, pad_from: int) -> torch.Tensor:
    x = logits.float()
    if pad_from < x.shape[-1]:
        col = torch.arange(x.shape[-1], device=x.device)
        x = x.masked_fill(col >= pad_from, float("-inf"))
    return x


def _local_max(logits, pad_from: int):
    return _masked(logits, pad_from).amax(dim=-1)


def _sumexp_and_target(logits, m, local_t, pad_from: int):
    x = _masked(logits, pad_from) - m.unsqueeze(-1)
    per_rank = x.shape[-1]
    inside = (local_t >= 0) & (local_t < per_rank)
    tgt = torch.gather(x, -1, local_t.clamp(0, per_rank - 1).unsqueeze(-1)).squeeze(-1)
    return x.exp().sum(dim=-1), tgt.masked_fill(~inside, 0.0)


def _grad(logits, m, sumexp, local_t, g, pad_from: int):
    p = (_masked(logits, pad_from) - m.unsqueeze(-1)).exp() / sumexp.unsqueeze(-1)
    col = torch.arange(p.shape[-1], device=p.device)
    p = p - (col == local_t.unsqueeze(-1)).to(p.dtype)  # never true for targets on other ranks
    return (p * g.unsqueeze(-1)).to(logits.dtype)


_compiled = {}


def _fn(name: str, fn, device: torch.device):
    if device.type != "cuda":
        return fn
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=False)
    return _compiled[name]


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, true_vocab):
        per_rank = logits.shape[-1]
        start = group_rank(group) * per_rank
        pad_from = true_vocab - start
        dev = logits.device
        m = _fn("max", _local_max, dev)(logits, pad_from)
        if group_size(group) > 1:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        local_t = target - start
        sumexp, tgt = _fn("sumexp", _sumexp_and_target, dev)(logits, m, local_t, pad_from)
        if group_size(group) > 1:
            stats = torch.stack([sumexp, tgt])
            dist.all_reduce(stats, group=group)
            sumexp, tgt = stats[0], stats[1]
        ctx.save_for_backward(logits, m, sumexp, local_t)
        ctx.pad_from = pad_from
        return sumexp.log() - tgt

    @staticmethod
    def backward(ctx, g):
        logits, m, sumexp, local_t = ctx.saved_tensors
        grad = _fn("grad", _grad, logits.device)(logits, m, sumexp, local_t, g.contiguous(), ctx.pad_from)
        return grad, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group, true_vocab: int) -> torch.Tensor:
    """Per-token loss; ``logits`` [..., V_padded / tp], ``target`` [...] global ids."""
    return _VocabParallelCE.apply(logits, target, group, true_vocab)
