"""Where a micro-batch's activation lives across one pipeline stage under a layer's layout,
and which ranks must exchange data when two neighbouring layers' layouts differ. Pure Python
(no torch), so the search prices re-layouts with the same geometry the runtime uses."""
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple


@dataclass(frozen=True)
class Layout:
    """How an activation is spread over a stage: DP shards of the batch, TP replicas or
    sequence shards (sp) inside each TP group."""

    tp: int
    tp_consec: bool
    sp: bool

    @staticmethod
    def of(s, stage_world: int) -> "Layout":
        # Degenerate cases share one layout so no re-layout is done between them.
        consec = True if s.tp in (1, stage_world) else s.tp_consec
        return Layout(tp=s.tp, tp_consec=consec, sp=s.sp and s.tp > 1)

    def coords(self, local_idx: int, stage_world: int) -> Tuple[int, int]:
        """(dp_rank, tp_rank) of a stage-local rank index."""
        dp = stage_world // self.tp
        if self.tp_consec:
            return local_idx // self.tp, local_idx % self.tp
        return local_idx % dp, local_idx // dp

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
        """(tp groups, dp groups) as tuples of global ranks."""
        w, t = len(stage_ranks), self.tp
        dp = w // t
        r = list(stage_ranks)
        if self.tp_consec:
            tp_groups = [tuple(r[j * t:(j + 1) * t]) for j in range(dp)]
            dp_groups = [tuple(r[i::t]) for i in range(t)]
        else:
            tp_groups = [tuple(r[i::dp]) for i in range(dp)]
            dp_groups = [tuple(r[j * dp:(j + 1) * dp]) for j in range(t)]
        return tp_groups, dp_groups


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
