"""Where a micro-batch's activation lives across one pipeline stage under a layer's layout,
and which ranks must exchange data when two neighbouring layers' layouts differ. No torch,
so the search prices re-layouts with the same geometry the runtime uses."""
import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


@dataclass(frozen=True, order=True)
class Layout:
    """How an activation is spread over a stage: DP shards of the batch, TP replicas or
    sequence shards (sp) inside each TP group. A Ulysses layer's group shards the sequence
    just as a Megatron-SP TP group does, so both have the same layout (and need no re-layout
    between them): the layout is where the activation lives, not how a layer computes on it."""

    tp: int
    tp_consec: bool
    sp: bool

    @staticmethod
    def of(s, stage_world: int) -> "Layout":
        # Degenerate cases share one layout so no re-layout is done between them.
        consec = True if s.tp in (1, stage_world) else s.tp_consec
        return Layout(tp=s.tp, tp_consec=consec, sp=bool(s.sp) and s.tp > 1)

    def rank(self, dp_rank: int, tp_rank: int, stage_world: int) -> int:
        """Stage-local index of the rank at (dp_rank, tp_rank). The rank geometry of consecutive
        and strided TP groups is written here only; groups, strides and coordinates follow from it."""
        if self.tp_consec:
            return dp_rank * self.tp + tp_rank
        return tp_rank * (stage_world // self.tp) + dp_rank

    def coords(self, local_idx: int, stage_world: int) -> Tuple[int, int]:
        """(dp_rank, tp_rank) of a stage-local rank index."""
        return _coords(self, stage_world)[local_idx]

    def strides(self, stage_world: int) -> Tuple[int, int]:
        """(rank stride inside a TP group, rank stride inside a DP group)."""
        base = self.rank(0, 0, stage_world)
        return self.rank(0, 1, stage_world) - base, self.rank(1, 0, stage_world) - base

    def block(self, local_idx: int, stage_world: int, seq: int, batch: int) -> Tuple[slice, slice]:
        """(sequence slice, batch slice) of the full [seq, batch] micro-batch a stage rank holds."""
        dp_rank, tp_rank = self.coords(local_idx, stage_world)
        b = batch // (stage_world // self.tp)
        rows = slice(dp_rank * b, (dp_rank + 1) * b)
        if self.sp:
            s = seq // self.tp
            return slice(tp_rank * s, (tp_rank + 1) * s), rows
        return slice(0, seq), rows

    def is_primary(self, local_idx: int, stage_world: int) -> bool:
        """Whether this rank's block is the one copy used when several TP ranks hold it."""
        return self.sp or self.coords(local_idx, stage_world)[1] == 0

    def groups(self, stage_ranks: Sequence[int]) -> Tuple[List[Tuple[int, ...]], List[Tuple[int, ...]]]:
        """(tp groups, dp groups) as tuples of global ranks, in the order of their dp (tp) rank."""
        w, r = len(stage_ranks), list(stage_ranks)
        dp = w // self.tp
        tp_groups = [tuple(r[self.rank(j, i, w)] for i in range(self.tp)) for j in range(dp)]
        dp_groups = [tuple(r[self.rank(j, i, w)] for j in range(dp)) for i in range(self.tp)]
        return tp_groups, dp_groups


@functools.lru_cache(maxsize=None)
def _coords(layout: Layout, stage_world: int) -> Dict[int, Tuple[int, int]]:
    return {layout.rank(d, t, stage_world): (d, t) for d in range(stage_world // layout.tp) for t in range(layout.tp)}


def _stretches(lo: Layout, other: Layout, stage_world: int) -> np.ndarray:
    """For every local rank, the stretch of the micro-batch its block under `lo` lies in, where the
    stretches are cut at the batch and sequence points that `lo` and `other` both cut at."""
    w = stage_world
    dp_rank, tp_rank = np.divmod(np.arange(w), lo.tp)
    order = np.empty(w, dtype=np.int64)
    order[lo.rank(dp_rank, tp_rank, w)] = np.arange(w)  # local rank -> its (dp_rank, tp_rank) entry
    dp_rank, tp_rank = dp_rank[order], tp_rank[order]
    batch_cut = math.lcm(lo.tp, other.tp)  # batch rows per DP shard: tp (of a [w, w] grid)
    seq_len, other_seq = (w // lo.tp if lo.sp else w), (w // other.tp if other.sp else w)
    seq_cut = math.lcm(seq_len, other_seq)
    seq = tp_rank * seq_len if lo.sp else np.zeros(w, dtype=np.int64)
    return dp_rank * lo.tp // batch_cut * (w // seq_cut) + seq // seq_cut


def exchange_sets(src: Layout, dst: Layout, stage_world: int) -> List[Tuple[int, ...]]:
    """Partition of a stage's local ranks into the sets that must exchange data to go from
    layout src to dst (forward) and back (backward): a rank is joined to every rank whose
    primary block overlaps the block it needs, under either direction.

    Every cell of the [seq, batch] micro-batch has one primary holder per layout, so joining
    a rank to the primary holders it reads from joins every rank that holds a cell, under
    either layout, with every other. Blocks are products of a batch interval (the DP shard)
    and a sequence interval (the TP rank's under sp, else all of it), and the intervals of two
    equal partitions of a line chain together by overlap between the points both partitions
    cut at. So a block reaches exactly the blocks of the other layout in its stretch (between
    those points, in batch and in sequence), and a rank joins its stretch under src with its
    stretch under dst: O(stage_world), where comparing blocks pairwise is O(stage_world^2)."""
    w = stage_world
    a, b = _stretches(src, dst, w), _stretches(dst, src, w)
    label = _components(a, b, w)[a]
    order = np.argsort(label, kind="stable")
    cuts = np.nonzero(np.diff(label[order]))[0] + 1
    return sorted(tuple(m.tolist()) for m in np.split(order, cuts))


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """The smallest node of each node's component in the graph on 0..n-1 with edges a[i] - b[i]:
    labels only ever fall to a neighbour's or a label's label, so they stay inside the component,
    and they stop changing only once both ends of every edge agree."""
    label = np.arange(n)
    while True:
        new = label.copy()
        np.minimum.at(new, a, label[b])
        np.minimum.at(new, b, label[a])
        while True:  # jump to the label's label until each label is its own
            up = new[new]
            if np.array_equal(up, new):
                break
            new = up
        if np.array_equal(new, label):
            return label
        label = new
