"""Re-lay-out an activation between two layers of one stage whose layouts differ.

Under a layout each stage rank holds the block (sequence range x batch range) of the full
[seq, batch, hidden] micro-batch given by its (dp_rank, tp_rank). Forward all-gathers every
rank's block over the stage group and copies out the block the next layout assigns to this
rank; backward does the same with the gradient in the other direction. Replicated blocks
carry identical (full) gradients, so taking any one replica is exact.
"""
from typing import Tuple

import torch

from megatron_galvatron.parallel_state import Layout
from megatron_galvatron.tensor_parallel.mappings import all_gather_dim0


def block_of(layout: Layout, local_idx: int, stage_world: int, seq: int, batch: int) -> Tuple[slice, slice]:
    """(sequence slice, batch slice) of the full micro-batch held by a stage-local rank."""
    dp = stage_world // layout.tp
    dp_rank, tp_rank = layout.coords(local_idx, stage_world)
    b = batch // dp
    if layout.sp:
        s = seq // layout.tp
        return slice(tp_rank * s, (tp_rank + 1) * s), slice(dp_rank * b, (dp_rank + 1) * b)
    return slice(0, seq), slice(dp_rank * b, (dp_rank + 1) * b)


def full_shape(layout: Layout, local_shape, stage_world: int) -> Tuple[int, int]:
    dp = stage_world // layout.tp
    seq = local_shape[0] * (layout.tp if layout.sp else 1)
    return seq, local_shape[1] * dp


def _move(x: torch.Tensor, src: Layout, dst: Layout, group, local_idx: int, stage_world: int) -> torch.Tensor:
    seq, batch = full_shape(src, x.shape, stage_world)
    pieces = all_gather_dim0(x.contiguous().unsqueeze(0), group)  # [W, s, b, h]
    ds, db = block_of(dst, local_idx, stage_world, seq, batch)
    out = x.new_empty((ds.stop - ds.start, db.stop - db.start) + tuple(x.shape[2:]))
    for j in range(stage_world):
        if not src.sp and src.coords(j, stage_world)[1] != 0:
            continue  # a TP replica of a block already taken
        ss, sb = block_of(src, j, stage_world, seq, batch)
        s0, s1 = max(ss.start, ds.start), min(ss.stop, ds.stop)
        b0, b1 = max(sb.start, db.start), min(sb.stop, db.stop)
        if s0 < s1 and b0 < b1:
            out[s0 - ds.start:s1 - ds.start, b0 - db.start:b1 - db.start] = \
                pieces[j, s0 - ss.start:s1 - ss.start, b0 - sb.start:b1 - sb.start]
    return out


class _Relayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, src, dst, group, local_idx, stage_world):
        ctx.args = (src, dst, group, local_idx, stage_world)
        return _move(x, src, dst, group, local_idx, stage_world)

    @staticmethod
    def backward(ctx, g):
        src, dst, group, local_idx, stage_world = ctx.args
        return _move(g, dst, src, group, local_idx, stage_world), None, None, None, None, None


def relayout(x: torch.Tensor, src: Layout, dst: Layout, group, local_idx: int, stage_world: int) -> torch.Tensor:
    if src == dst or stage_world == 1:
        return x
    return _Relayout.apply(x, src, dst, group, local_idx, stage_world)
