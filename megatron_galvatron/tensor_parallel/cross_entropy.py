"""Cross entropy over logits split along the vocab across a TP group.

Never gathers the vocab: max, sum-exp and the target logit are reduced over the group. Works
in fp32 internally on a bf16 input without keeping a second fp32 copy of the logits for
backward (the softmax is recomputed from the saved input). Columns at or beyond
``true_vocab`` are padding and never receive probability.
"""
import torch
import torch.distributed as dist

from megatron_galvatron.tensor_parallel.layers import group_rank, group_size


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, true_vocab):
        tp = group_size(group)
        per_rank = logits.shape[-1]
        start = group_rank(group) * per_rank
        x = logits.to(torch.float32, copy=True)  # worked on in place; logits are saved for backward
        pad_from = true_vocab - start
        if pad_from < per_rank:
            x[..., max(pad_from, 0):] = float("-inf")
        m = x.max(dim=-1).values
        if tp > 1:
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        x.sub_(m.unsqueeze(-1))
        local_t = target - start
        inside = (local_t >= 0) & (local_t < per_rank)
        idx = local_t.clamp(0, per_rank - 1).unsqueeze(-1)
        tgt = torch.gather(x, -1, idx).squeeze(-1).masked_fill(~inside, 0.0)
        sumexp = x.exp_().sum(dim=-1)  # x now holds exp(logits - max)
        if tp > 1:
            stats = torch.stack([sumexp, tgt])
            dist.all_reduce(stats, group=group)
            sumexp, tgt = stats[0], stats[1]
        loss = sumexp.log() - tgt
        ctx.save_for_backward(logits, m, sumexp, idx, inside)
        ctx.start, ctx.pad_from = start, pad_from
        return loss

    @staticmethod
    def backward(ctx, g):
        logits, m, sumexp, idx, inside = ctx.saved_tensors
        p = (logits.float() - m.unsqueeze(-1)).exp_().div_(sumexp.unsqueeze(-1))
        if ctx.pad_from < p.shape[-1]:
            p[..., max(ctx.pad_from, 0):] = 0.0
        p.scatter_add_(-1, idx, -inside.to(p.dtype).unsqueeze(-1))
        p.mul_(g.unsqueeze(-1))
        return p.to(logits.dtype), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group, true_vocab: int) -> torch.Tensor:
    """Per-token loss; ``logits`` [..., V_padded / tp], ``target`` [...] global ids."""
    return _VocabParallelCE.apply(logits, target, group, true_vocab)
