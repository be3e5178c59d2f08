"""One pipeline stage of alike layers: its DP over (layer, memory, strategy), the linear relaxation
that bounds it, and the division of layers between stages."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_galvatron.layout import Layout
from megatron_galvatron.plan import LayerStrategy
from search import dp
from search.stage_memory import InFlight, budget_bytes, persistent_bytes

MiB = float(2 ** 20)


@dataclass
class Table:
    """Every layer strategy of one (stage size, micro-batch) with its prices."""

    strategies: List[LayerStrategy]
    per_mb: np.ndarray
    per_iter: np.ndarray
    states: np.ndarray
    activation: np.ndarray
    transient: np.ndarray
    layouts: List[Layout]
    layout_id: np.ndarray
    relayout: Dict[Tuple[Layout, Layout], float]  # (from layout, to layout) -> cost per micro-batch
    vocab_layouts: List[Layout]  # layouts the embedding / LM head can have in this stage
    lazy: np.ndarray     # see search.stage_memory.persistent_bytes
    settled: np.ndarray
    pooled: np.ndarray   # see search.stage_memory.budget_bytes
    ratio: float         # the allocator's reserved / allocated
    fp8: np.ndarray = None  # whether each strategy computes in float8

    def persistent(self, flight: InFlight) -> np.ndarray:
        """Bytes each strategy holds at the stage's peak besides its transient."""
        return persistent_bytes(self.states, self.activation, self.lazy, self.settled, flight)

    def budgeted(self, flight: InFlight) -> np.ndarray:
        """What each strategy counts against the memory budget besides its transient."""
        return budget_bytes(self.states, self.activation, self.lazy, self.settled, self.pooled, flight, self.ratio)


class Surface:
    """One stage DP: the best objective of n = 1..n_hi alike layers within any memory.

    Strategies are those whose transient peak fits the reserved `level`, less any that another
    strategy of the same layout beats on both time and memory. Memory is counted in units above
    the smallest strategy's (so the memory-minimal plan costs 0 units and is never lost to
    rounding; at the positions `bf16_at` above the smallest bf16 strategy's); units are rounded
    up, so a plan the DP accepts always fits. One table per layout
    the last layer may have to hand over to (None: no hand-over).
    """

    def __init__(self, table: Table, k: int, flight: InFlight, level: float, in_layout,
                 out_layouts: Sequence, n_hi: int, budget: float, bf16_at: Tuple[int, ...] = ()):
        idx = np.nonzero(table.transient <= level)[0]
        cost = k * table.per_mb[idx] + table.per_iter[idx]
        mem = table.budgeted(flight)[idx]
        # where some layers must stay bf16, an fp8 strategy may not crowd out a bf16 one
        kind = table.layout_id[idx] * 2 + (table.fp8[idx] if bf16_at else 0)
        self.idx, cost, mem = _pareto(idx, cost, mem, kind)
        self.bf16_at = np.sort(np.array(bf16_at, dtype=np.int64))
        self.fp8_cols = np.nonzero(table.fp8[self.idx])[0] if bf16_at else np.array([], dtype=np.int64)
        used = np.unique(table.layout_id[self.idx])
        self.group = np.searchsorted(used, table.layout_id[self.idx]).astype(np.int32)
        layouts = [table.layouts[g] for g in used]
        hop = table.relayout
        self.gtrans = np.array([[k * hop[a, b] for b in layouts] for a in layouts])
        self.in_cost = None if in_layout is None else np.array(
            [k * hop[in_layout, layouts[g]] for g in self.group])
        self.out = {o: i for i, o in enumerate(out_layouts)}
        self.finals = np.array([[0.0 if o is None else k * hop[layouts[g], o] for g in self.group]
                                for o in out_layouts])
        self.cost = cost
        self.floor = float(mem.min())
        excess = mem - self.floor
        span = min(n_hi * float(excess.max()), max(budget, 0.0))
        units = min(4096, max(256, 32 * n_hi))
        self.unit = max(MiB, span / units)
        self.mem_u = np.ceil(excess / self.unit - 1e-9).astype(np.int64)
        # a layer that must stay bf16 counts its units above the lightest bf16 strategy, so that
        # the memory-minimal plan still costs 0 units (no bf16 strategy: its row is all inf anyway)
        bf16_mem = np.delete(mem, self.fp8_cols)
        self.floor_bf16 = float(bf16_mem.min()) if len(self.bf16_at) and len(bf16_mem) else self.floor
        self.mem_u_bf16 = np.maximum(np.ceil((mem - self.floor_bf16) / self.unit - 1e-9), 0).astype(np.int64)
        self.cap = int(math.ceil(span / self.unit)) + n_hi  # enough for every rounded-up assignment
        self.intra_hi, self.mem_hi = self._intra(n_hi), self._mem(n_hi)
        self.table, self.choices = dp.cost_table(self.intra_hi, self.mem_hi, self.group, self.gtrans,
                                                 self.cap, self.finals)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + (0 if self.choices is None else self.choices.nbytes)

    def _intra(self, n: int) -> np.ndarray:
        intra = np.tile(self.cost, (n, 1))
        if self.in_cost is not None:
            intra[0] += self.in_cost
        rows = self.bf16_at[self.bf16_at < n]
        if len(rows) and len(self.fp8_cols):
            intra[np.ix_(rows, self.fp8_cols)] = np.inf
        return intra

    def _mem(self, n: int) -> np.ndarray:
        mem = np.tile(self.mem_u, (n, 1))
        mem[self.bf16_at[self.bf16_at < n]] = self.mem_u_bf16
        return mem

    def budget_units(self, room: float, n: np.ndarray) -> np.ndarray:
        left = room - n * self.floor
        if len(self.bf16_at):
            left = left - np.searchsorted(self.bf16_at, n) * (self.floor_bf16 - self.floor)
        return np.where(left < 0, -1, np.minimum(np.floor(np.maximum(left, 0) / self.unit), self.cap)).astype(np.int64)

    def costs(self, room: float, out_layout) -> np.ndarray:
        """Best objective of n layers, n = 1..n_hi, when the layers may use `room` bytes."""
        t = self.table[self.out[out_layout]]
        n = np.arange(1, t.shape[0] + 1)
        b = self.budget_units(room, n)
        return np.where(b < 0, np.inf, t[n - 1, np.maximum(b, 0)])

    def solve(self, n: int, room: float, out_layout) -> List[int]:
        """The strategies (table indices) behind costs(room, out_layout)[n - 1]."""
        b = int(self.budget_units(room, np.array([n]))[0])
        final = self.finals[self.out[out_layout]]
        _, strategies, _ = dp.backtrack(self.choices, self.intra_hi, self.mem_hi, self.group, self.gtrans, n, b,
                                        final)
        return [int(self.idx[s]) for s in strategies]


def canonical_order(layers: List[LayerStrategy], stage_world: int) -> List[LayerStrategy]:
    """Sort each run of same-layout, same-precision layers (ddp before zero2 before zero3, plain
    before checkpointed); the cost does not change since only layout changes cost anything, and
    the layers --fp8-skip-first/last keeps in bf16 stay where they are."""
    out, start = [], 0
    rank = {"ddp": 0, "zero2": 1, "zero3": 2}

    def run_key(s: LayerStrategy):
        return Layout.of(s, stage_world), s.fp8

    for i in range(1, len(layers) + 1):
        if i == len(layers) or run_key(layers[i]) != run_key(layers[start]):
            out += sorted(layers[start:i], key=lambda s: (rank[s.dp_type], s.checkpoint))
            start = i
    return out


def lp_mix(cost: np.ndarray, mem: np.ndarray, per_layer: float) -> List[int]:
    """Indices of the (at most two) strategies the linear relaxation mixes at `per_layer` bytes."""
    hull = _hull(cost, mem)
    hm = [mem[j] for j in hull]
    if per_layer < hm[0]:
        return []
    pos = int(np.searchsorted(hm, per_layer, side="right"))
    if pos >= len(hull):
        return [hull[-1]]
    return [hull[pos - 1], hull[pos]]


def _hull(cost: np.ndarray, mem: np.ndarray) -> List[int]:
    """Indices of the lower-left convex envelope of (mem, cost), by increasing memory."""
    order = np.lexsort((cost, mem))
    hull: List[int] = []
    best = math.inf
    for j in order:
        if cost[j] >= best:
            continue
        best = cost[j]
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (cost[b] - cost[a]) * (mem[j] - mem[a]) >= (cost[j] - cost[a]) * (mem[b] - mem[a]):
                hull.pop()
            else:
                break
        hull.append(int(j))
    return hull

def _pareto(idx: np.ndarray, cost: np.ndarray, mem: np.ndarray, group: np.ndarray):
    """Drop strategies another strategy of the same layout beats: strictly faster in no more memory,
    or an exact duplicate. Equally fast ones that need more memory stay, so that ties go to the
    simpler strategy (enumeration order: ddp before ZeRO, no checkpointing first)."""
    keep = []
    for j in range(len(idx)):
        same = group == group[j]
        beaten = same & (mem <= mem[j]) & ((cost < cost[j]) | ((cost == cost[j]) & (mem == mem[j])
                                                                 & (np.arange(len(idx)) < j)))
        if not beaten.any():
            keep.append(j)
    keep = np.array(keep, dtype=np.int64)
    return idx[keep], cost[keep], mem[keep]


def lp_bound(cost: np.ndarray, mem: np.ndarray, n: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Lower bound on the cost of n alike layers whose memory must stay within `room` (per n).

    The linear relaxation of choosing one strategy per layer: n x the lower convex envelope of
    the (memory, cost) points at room / n; inf where even the smallest memory does not fit.
    """
    hull = _hull(cost, mem)
    hm, hc = mem[hull], cost[hull]
    n = np.asarray(n, dtype=float)
    per = np.asarray(room, dtype=float) / n
    return np.where(per >= hm[0], n * np.interp(per, hm, hc), np.inf)


def min_max_partition(costs: Sequence[Sequence[float]], total: int) -> Optional[List[int]]:
    """Layer counts n_i >= 1 summing to `total` that minimise max_i costs[i][n_i - 1].

    Every stage's layers are alike, so only the counts matter; a stage's cost is made monotone in
    n (a longer stage never counts as cheaper), then the smallest threshold whose largest
    admissible counts add up to `total` is found by bisection.
    """
    mono = np.maximum.accumulate(np.asarray(costs, dtype=float), axis=1)
    stages, longest = mono.shape
    if stages > total or stages * longest < total:
        return None
    values = np.unique(mono[np.isfinite(mono)])

    def caps(x: float) -> np.ndarray:
        return (mono <= x).sum(axis=1)

    def enough(c: np.ndarray) -> bool:
        return c.sum() >= total and c.min() >= 1

    if len(values) == 0 or not enough(caps(values[-1])):
        return None
    lo, hi = 0, len(values) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(caps(values[mid])):
            hi = mid
        else:
            lo = mid + 1
    n = [int(x) for x in caps(values[lo])]
    # give back layers from the currently most expensive stages (ties: the longer, then the earlier)
    heap = [(-mono[i, n[i] - 1], -n[i], i) for i in range(stages) if n[i] > 1]
    heapq.heapify(heap)
    extra = sum(n) - total
    while extra > 0:
        _, _, i = heapq.heappop(heap)
        n[i] -= 1
        extra -= 1
        if n[i] > 1:
            heapq.heappush(heap, (-mono[i, n[i] - 1], -n[i], i))
    return n
