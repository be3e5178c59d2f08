"""Re-lay-out an activation between two layers of one stage whose layouts differ.

Under a layout each stage rank holds the block (sequence range x batch range) of the full
[seq, batch, hidden] micro-batch given by its (dp_rank, tp_rank). Forward all-gathers the
blocks within this rank's exchange set (the ranks whose blocks it needs or that need its
block, see parallel_state.exchange_sets) and copies out the block the next layout assigns to
it; backward does the same with the gradient in the other direction. Replicated blocks carry
identical (full) gradients, so taking the primary replica is exact.
"""
from typing import Sequence, Tuple

import torch

from megatron_galvatron.layout import Layout
from megatron_galvatron.tensor_parallel.mappings import all_gather_dim0


def full_shape(layout: Layout, local_shape, stage_world: int) -> Tuple[int, int]:
    dp = stage_world // layout.tp
    seq = local_shape[0] * (layout.tp if layout.sp else 1)
    return seq, local_shape[1] * dp


def _move(x: torch.Tensor, src: Layout, dst: Layout, group, members: Sequence[int], local_idx: int,
          stage_world: int) -> torch.Tensor:
    seq, batch = full_shape(src, x.shape, stage_world)
    pieces = all_gather_dim0(x.contiguous().unsqueeze(0), group)  # [len(members), s, b, h]
    ds, db = dst.block(local_idx, stage_world, seq, batch)
    out = x.new_empty((ds.stop - ds.start, db.stop - db.start) + tuple(x.shape[2:]))
    for k, j in enumerate(members):
        if not src.is_primary(j, stage_world):
            continue
        ss, sb = src.block(j, stage_world, seq, batch)
        s0, s1 = max(ss.start, ds.start), min(ss.stop, ds.stop)
        b0, b1 = max(sb.start, db.start), min(sb.stop, db.stop)
        if s0 < s1 and b0 < b1:
            out[s0 - ds.start:s1 - ds.start, b0 - db.start:b1 - db.start] = \
                pieces[k, s0 - ss.start:s1 - ss.start, b0 - sb.start:b1 - sb.start]
    return out


class _Relayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, dst, group, members, local_idx, stage_world):
        ctx.args = (src, dst, group, members, local_idx, stage_world)
        return _move(x, src, dst, group, members, local_idx, stage_world)

    @staticmethod
    def backward(ctx, g):
        src, dst, group, members, local_idx, stage_world = ctx.args
        return (_move(g, dst, src, group, members, local_idx, stage_world),) + (None,) * 6


def relayout(x: torch.Tensor, src: Layout, dst: Layout, ps) -> torch.Tensor:
    """x laid out as src on this rank -> the block dst assigns it (ps: the ParallelState)."""
    if src == dst or ps.stage_world == 1:
        return x
    group, members = ps.exchange_group(src, dst)
    return _Relayout.apply(x, src, dst, group, members, ps.local_idx, ps.stage_world)
