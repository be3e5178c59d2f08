"""Ulysses sequence parallelism: all-to-all between sequence and head sharding.

Outside attention each rank of a Ulysses group holds a contiguous chunk of the sequence with
every head; attention needs whole sequences, so q, k and v go through one all-to-all that
leaves each rank every position of 1/u of the heads, and the attention output through the
inverse. Both are exact permutations, so each one's backward is the other.

Activations are [seq, batch, heads, head_dim]; group rank j holds sequence chunk j and, after
the exchange, heads [j*n/u, (j+1)*n/u).
"""
import math

import torch
import torch.distributed as dist


def _seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    u = dist.get_world_size(group)
    s, b, n, d = x.shape
    send = x.reshape(s, b, u, n // u, d).permute(2, 0, 1, 3, 4).contiguous()  # [dest, s, b, n/u, d]
    recv = torch.empty_like(send)  # [source = sequence chunk, s, b, n/u, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.reshape(u * s, b, n // u, d)


def _heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    u = dist.get_world_size(group)
    s, b, c, d = x.shape
    send = x.reshape(u, s // u, b, c, d).contiguous()  # [dest = its sequence chunk, s/u, b, c, d]
    recv = torch.empty_like(send)  # [source = head chunk, s/u, b, c, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(s // u, b, u * c, d)


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, g):
        return _heads_to_seq(g, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, g):
        return _seq_to_heads(g, ctx.group), None


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """[s/u, b, n, d] sequence chunk, all heads -> [s, b, n/u, d] whole sequence, local heads;
    backward is the inverse all-to-all."""
    return _SeqToHeads.apply(x, group)


def heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """[s, b, n/u, d] whole sequence, local heads -> [s/u, b, n, d]; backward is the inverse."""
    return _HeadsToSeq.apply(x, group)


def kv_replication(num_query_groups: int, group_size: int) -> int:
    """How many copies of each K/V head make their count divisible by the group size.

    With g K/V heads and u ranks, lcm(g, u) heads split evenly; each copy sits next to its
    original (repeat_interleave), so the query heads a rank receives still map onto the K/V
    heads it receives as grouped-query attention expects (n is a multiple of both g and u)."""
    return group_size // math.gcd(num_query_groups, group_size)


def exchange_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group, kv_copies: int):
    """q [s/u, b, n, d], k and v [s/u, b, g, d] -> the same with the whole sequence and 1/u of
    the heads (k and v replicated kv_copies times first), in one all-to-all."""
    u = dist.get_world_size(group)
    if kv_copies > 1:
        k, v = k.repeat_interleave(kv_copies, dim=2), v.repeat_interleave(kv_copies, dim=2)
    s, b, n, d = q.shape
    g = k.shape[2]
    # Interleave per destination so that one exchange moves all three: [s, b, u, (n+2g)/u, d].
    qkv = torch.cat([t.reshape(s, b, u, t.shape[2] // u, d) for t in (q, k, v)], dim=3)
    out = seq_to_heads(qkv.reshape(s, b, n + 2 * g, d), group)
    return out.split([n // u, g // u, g // u], dim=2)
