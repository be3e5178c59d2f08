"""Where a micro-batch's activation lives across one pipeline stage under a layer's layout,
and which ranks must exchange data when two neighbouring layers' layouts differ. Pure Python
(no torch), so the search prices re-layouts with the same geometry the runtime uses."""
import functools
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple


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


def _overlap(a: Tuple[slice, slice], b: Tuple[slice, slice]) -> bool:
    return all(max(x.start, y.start) < min(x.stop, y.stop) for x, y in zip(a, b))


def exchange_sets(src: Layout, dst: Layout, stage_world: int) -> List[Tuple[int, ...]]:
    """Partition of a stage's local ranks into the sets that must exchange data to go from
    layout src to dst (forward) and back (backward): a rank is joined to every rank whose
    primary block overlaps the block it needs. Block geometry is scale-free, so a
    [stage_world, stage_world] grid stands for any divisible sequence and batch."""
    w = stage_world
    parent = list(range(w))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for have, need in ((src, dst), (dst, src)):
        for r in range(w):
            wanted = need.block(r, w, w, w)
            for j in range(w):
                if have.is_primary(j, w) and _overlap(have.block(j, w, w, w), wanted):
                    parent[root(r)] = root(j)
    sets: Dict[int, List[int]] = {}
    for i in range(w):
        sets.setdefault(root(i), []).append(i)
    return sorted(tuple(v) for v in sets.values())
