"""The plan search: enumerate pipeline shapes, solve each stage with the DP, keep the fastest plans.

A candidate fixes pp degree, global batch, micro-batch count, pipeline type and the vocab
strategy. For it, every stage runs the layer DP once per memory "level" and the DP answers
every stage length n at once; a min-max partition over those answers divides the layers so the
slowest stage is as fast as memory allows. Candidates are visited best upper bound first and
the search stops when no remaining candidate can beat the k-th best plan found.

Stage peak memory is sum(persistent memory of its layers) + max(transient memory of one layer),
which is not additive; the DP handles it by reserving a level tau for the transient and allowing
only strategies whose transient is <= tau. The exact optimum is the best over all levels; the
levels tried are the top one, a descent from the top one's answer, and the level that minimises
memory (so that a budget the minimum says fits always finds a plan).
"""
from __future__ import annotations

import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_galvatron.errors import UserError
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from search import dp
from search.cost_model import GiB, CostModel, Prediction, microbatches_in_flight
from search.strategies import Space, divisors, layer_strategies, layout, vocab_strategies

MiB = float(2 ** 20)


class InfeasibleError(UserError):
    """No plan fits the memory budget; the message quotes the smallest budget that would."""


@dataclass(frozen=True)
class Candidate:
    pp: int
    global_bsz: int
    chunks: int
    pipeline_type: str
    vocab: VocabStrategy

    @property
    def micro_batch(self) -> int:
        return self.global_bsz // self.chunks

    @property
    def shape(self) -> Tuple[int, int, int, str]:
        """What makes two candidates real alternatives (vocab variants of one shape are not)."""
        return (self.pp, self.global_bsz, self.chunks, self.pipeline_type)

    @property
    def k(self) -> int:
        """Micro-batch slots of the pipeline timeline: chunks + pp - 1."""
        return self.chunks + self.pp - 1


@dataclass
class Result:
    candidate: Candidate
    plan: Plan
    prediction: Prediction

    @property
    def tokens_per_s(self) -> float:
        return self.prediction.tokens_per_s

    def sort_key(self) -> Tuple:
        c = self.candidate
        return (-self.tokens_per_s, max(self.prediction.stage_reserved), c.pp, c.chunks,
                c.pipeline_type != "1f1b", c.vocab.tp, c.vocab.dp_type, c.vocab.sp)


@dataclass
class Table:
    """Every layer strategy of one (stage size, micro-batch) with its prices."""

    strategies: List[LayerStrategy]
    per_mb: np.ndarray
    per_iter: np.ndarray
    states: np.ndarray
    activation: np.ndarray
    transient: np.ndarray
    layouts: List[Tuple]
    layout_id: np.ndarray
    relayout: float


@dataclass
class StageFrame:
    """What a stage's DP depends on besides the table."""

    in_flight: int
    fixed_mb: float       # vocab + p2p time per micro-batch
    fixed_iter: float     # vocab once-per-iteration time
    vocab_persistent: float
    vocab_transient: float
    in_layout: Optional[Tuple]   # layout the first layer receives from the embedding (first stage)
    out_layout: Optional[Tuple]  # layout the LM head wants from the last layer (last stage)


@dataclass
class Stats:
    candidates: int = 0
    evaluated: int = 0
    dp_runs: int = 0
    pruned_by_bound: int = 0
    pruned_by_memory: int = 0
    min_memory: Optional[Tuple[float, Candidate]] = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Searcher:
    def __init__(self, cost: CostModel, num_gpus: int, memory_gb: float, space: Space,
                 batch_sizes: Sequence[int], pipeline_types: Sequence[str] = ("1f1b", "gpipe"),
                 max_pp: Optional[int] = None, threads: int = 2):
        self.cost = cost
        self.model = cost.model
        self.num_gpus = num_gpus
        self.memory_gb = memory_gb
        self.budget = cost.allocatable(memory_gb * GiB)  # bytes of tensors per GPU
        self.space = space
        self.batch_sizes = sorted(set(batch_sizes))
        self.pipeline_types = list(pipeline_types)
        self.max_pp = max_pp or num_gpus
        self.threads = max(1, threads)
        self.stats = Stats()
        self._tables: Dict[Tuple[int, int], Optional[Table]] = {}
        self._stage_cache: Dict[Tuple, List[Tuple[float, List[int]]]] = {}
        self._middle_frames: Dict[Tuple, StageFrame] = {}
        self._bounds: Dict[Tuple, np.ndarray] = {}

    # ---------------------------------------------------------------- enumeration
    def pp_degrees(self) -> List[int]:
        return [p for p in divisors(self.num_gpus) if p <= min(self.max_pp, self.model.num_layers)]

    def candidates(self) -> List[Candidate]:
        out = []
        for bsz in self.batch_sizes:
            for pp in self.pp_degrees():
                sw = self.num_gpus // pp
                for chunks in divisors(bsz):
                    mb = bsz // chunks
                    if self.table(sw, mb) is None:
                        continue
                    # GPipe holds >= as many micro-batches as 1F1B on every stage for the same time,
                    # so when both are allowed only 1F1B can be among the best.
                    types = ["1f1b"] if set(self.pipeline_types) == {"1f1b", "gpipe"} else self.pipeline_types
                    for v in vocab_strategies(sw, mb, self.model, self.space):
                        for ptype in types:
                            out.append(Candidate(pp, bsz, chunks, ptype, v))
        return out

    def table(self, stage_world: int, micro_batch: int) -> Optional[Table]:
        key = (stage_world, micro_batch)
        if key in self._tables:
            return self._tables[key]
        strategies = layer_strategies(stage_world, micro_batch, self.model, self.space)
        if not strategies:
            self._tables[key] = None
            return None
        c = self.cost
        times = [c.layer_time(s, stage_world, micro_batch) for s in strategies]
        mems = [c.layer_memory(s, stage_world, micro_batch) for s in strategies]
        layouts = sorted({layout(s, stage_world) for s in strategies})
        index = {l: i for i, l in enumerate(layouts)}
        t = Table(strategies,
                  np.array([x.per_mb for x in times]), np.array([x.per_iter for x in times]),
                  np.array([m.states for m in mems]), np.array([m.activation for m in mems]),
                  np.array([m.transient for m in mems]), layouts,
                  np.array([index[layout(s, stage_world)] for s in strategies], dtype=np.int32),
                  c.relayout(stage_world, micro_batch))
        self._tables[key] = t
        return t

    def frame(self, cand: Candidate, stage: int) -> StageFrame:
        if 0 < stage < cand.pp - 1:  # no vocab module: shared by every candidate of this pipeline shape
            key = (cand.pp, cand.chunks, cand.micro_batch, cand.pipeline_type, stage)
            hit = self._middle_frames.get(key)
            if hit is None:
                hit = self._middle_frames[key] = self._frame(cand, stage)
            return hit
        return self._frame(cand, stage)

    def _frame(self, cand: Candidate, stage: int) -> StageFrame:
        sw = self.num_gpus // cand.pp
        mb = cand.micro_batch
        in_flight = microbatches_in_flight(cand.pipeline_type, cand.chunks, cand.pp, stage)
        vt, vm = self.cost.vocab(cand.vocab, sw, mb, cand.pp, stage)
        p2p = ((stage > 0) + (stage < cand.pp - 1)) * self.cost.p2p(cand.pp, sw, mb)
        vl = layout(cand.vocab, sw)
        return StageFrame(in_flight, vt.per_mb + p2p, vt.per_iter, vm.persistent(in_flight), vm.transient,
                          vl if stage == 0 else None, vl if stage == cand.pp - 1 else None)

    # ---------------------------------------------------------------- bounds
    def n_max(self, pp: int) -> int:
        L = self.model.num_layers
        return L if pp == 1 else min(L - pp + 1, 2 * math.ceil(L / pp))

    def _frames(self, cand: Candidate) -> List[StageFrame]:
        first = self.frame(cand, 0)
        if cand.pp == 1:
            return [first]
        return [first] + [self.frame(cand, i) for i in range(1, cand.pp)]

    def lower_bound(self, cand: Candidate, frames: List[StageFrame]) -> float:
        """Iteration time no plan of this candidate can beat (fastest strategy everywhere, no re-layout)."""
        t = self.table(self.num_gpus // cand.pp, cand.micro_batch)
        a, b, L, pp = t.per_mb.min(), t.per_iter.min(), self.model.num_layers, cand.pp
        mb = max(max(a + f.fixed_mb for f in frames), (L * a + sum(f.fixed_mb for f in frames)) / pp)
        it = max(max(b + f.fixed_iter for f in frames), (L * b + sum(f.fixed_iter for f in frames)) / pp)
        return cand.k * mb + it

    def memory_aware_bound(self, cand: Candidate, frames: List[StageFrame]) -> float:
        """Iteration time bound that respects memory (see lp_bound); inf when nothing can fit."""
        t = self.table(self.num_gpus // cand.pp, cand.micro_batch)
        L, k = self.model.num_layers, cand.k
        n_hi = self.n_max(cand.pp)
        n = np.arange(1, n_hi + 1)
        obj = k * t.per_mb + t.per_iter
        arrays = []
        for f in frames:
            key = ("lp", id(t), k, f.in_flight, f.vocab_persistent, f.vocab_transient, n_hi)
            arr = self._bounds.get(key)
            if arr is None:
                floor = np.maximum(t.transient, f.vocab_transient).min()
                room = np.full(n_hi, self.budget - f.vocab_persistent - floor)
                arr = self._bounds[key] = lp_bound(obj, t.states + f.in_flight * t.activation, n, room)
            arrays.append(arr + k * f.fixed_mb + f.fixed_iter)
        if cand.pp == 1:
            return float(arrays[0][L - 1])
        split = min_max_partition(arrays, L)
        return math.inf if split is None else float(max(arrays[i][m - 1] for i, m in enumerate(split)))

    def stage_min_memory(self, table: Table, frame: StageFrame, n_hi: int) -> np.ndarray:
        """Smallest allocated bytes of the stage with n = 1..n_hi layers."""
        mem = table.states + frame.in_flight * table.activation
        levels = np.unique(np.maximum(table.transient, frame.vocab_transient))
        best = np.full(n_hi, np.inf)
        n = np.arange(1, n_hi + 1)
        for tau in levels:
            allowed = np.maximum(table.transient, frame.vocab_transient) <= tau
            best = np.minimum(best, n * mem[allowed].min() + tau)
        return best + frame.vocab_persistent

    def min_memory(self, cand: Candidate, frames: List[StageFrame]) -> float:
        t = self.table(self.num_gpus // cand.pp, cand.micro_batch)
        L = self.model.num_layers
        if cand.pp == 1:
            return float(self.stage_min_memory(t, frames[0], L)[-1])
        n_hi = self.n_max(cand.pp)
        per_stage = [self.stage_min_memory(t, f, n_hi) for f in frames]
        split = min_max_partition(per_stage, L)
        if split is None:
            return math.inf
        return max(per_stage[i][n - 1] for i, n in enumerate(split))

    # ---------------------------------------------------------------- stage DP
    def _levels(self, table: Table, frame: StageFrame) -> np.ndarray:
        return np.unique(np.maximum(table.transient, frame.vocab_transient))[::-1]

    def _run_level(self, table: Table, frame: StageFrame, k: int, n_hi: int, level: float
                   ) -> List[Tuple[float, List[int]]]:
        reserve = np.maximum(table.transient, frame.vocab_transient)
        idx = np.nonzero(reserve <= level)[0]
        cost = k * table.per_mb[idx] + table.per_iter[idx]
        mem = table.states[idx] + frame.in_flight * table.activation[idx]
        idx, cost, mem = _pareto(idx, cost, mem, table.layout_id[idx])
        groups_raw = table.layout_id[idx]
        used = np.unique(groups_raw)
        group = np.searchsorted(used, groups_raw).astype(np.int32)
        G = len(used)
        gtrans = k * table.relayout * (1.0 - np.eye(G))
        floor = mem.min()
        excess = mem - floor
        room = self.budget - frame.vocab_persistent - level - np.arange(1, n_hi + 1) * floor
        if room[0] < 0:
            return [(math.inf, [])] * n_hi
        need = n_hi * excess.max()
        units = min(4096, max(256, 32 * n_hi))
        unit = max(MiB, min(room[0], need) / units)
        mem_u = np.ceil(excess / unit - 1e-9).astype(np.int64)
        cap = int(math.ceil(need / unit)) if need > 0 else 0
        budgets = np.where(room >= 0, np.minimum(np.floor(room / unit), cap), -1).astype(np.int64)
        intra = np.tile(cost, (n_hi, 1))
        layouts = [table.layouts[g] for g in used]
        if frame.in_layout is not None:
            intra[0] += np.array([0.0 if layouts[g] == frame.in_layout else k * table.relayout for g in group])
        final = None
        if frame.out_layout is not None:
            final = np.array([0.0 if layouts[g] == frame.out_layout else k * table.relayout for g in group])
        with self.stats.lock:
            self.stats.dp_runs += 1
        answers = dp.solve_lengths(intra, np.tile(mem_u, (n_hi, 1)), group, gtrans, budgets, final)
        return [(c, [int(idx[s]) for s in strat]) for c, strat, _ in answers]

    def solve_stage(self, table: Table, frame: StageFrame, k: int, n_hi: int, n_ref: int
                    ) -> List[Tuple[float, List[int]]]:
        """Best (objective, strategy indices) of the stage for every length n = 1..n_hi."""
        key = (id(table), frame.in_flight, frame.vocab_persistent, frame.vocab_transient, frame.in_layout,
               frame.out_layout, k, n_hi)
        hit = self._stage_cache.get(key)
        if hit is not None:
            return hit
        levels = self._levels(table, frame)
        best: List[Tuple[float, List[int]]] = [(math.inf, [])] * n_hi
        done = set()
        reserve = np.maximum(table.transient, frame.vocab_transient)
        obj = k * table.per_mb + table.per_iter
        mem = table.states + frame.in_flight * table.activation
        n = np.arange(1, n_hi + 1)

        def run(level: float) -> None:
            if level in done:
                return
            done.add(level)
            ok = reserve <= level
            lb = lp_bound(obj[ok], mem[ok], n, np.full(n_hi, self.budget - frame.vocab_persistent - level))
            if all(lb[i] >= best[i][0] * (1 - 1e-12) for i in range(n_hi)):
                return
            for i, ans in enumerate(self._run_level(table, frame, k, n_hi, level)):
                if ans[0] < best[i][0]:
                    best[i] = ans
        # the top level, then down from the reservation the answer for n_ref actually needs
        level = float(levels[0])
        for _ in range(4):
            run(level)
            c, strat = best[n_ref - 1]
            if math.isfinite(c):
                used = float(max(reserve[s] for s in strat))
                lower = [x for x in levels if x < used]
                nxt = used if used < level else (float(lower[0]) if lower else None)
            else:
                lower = [x for x in levels if x < level]
                nxt = float(lower[0]) if lower else None
            if nxt is None or nxt in done:
                break
            level = nxt
        # the memory-minimising level of every length, so feasibility matches min_memory()
        for i in range(n_hi):
            if not math.isfinite(best[i][0]):
                run(float(min(levels, key=lambda t: (n[i] * mem[reserve <= t].min() + t, -t))))
        self._stage_cache[key] = best
        return best

    # ---------------------------------------------------------------- one candidate
    def evaluate(self, cand: Candidate, frames: Optional[List[StageFrame]] = None) -> Optional[Result]:
        frames = frames or self._frames(cand)
        sw = self.num_gpus // cand.pp
        t = self.table(sw, cand.micro_batch)
        L, pp, k = self.model.num_layers, cand.pp, cand.k
        n_hi = self.n_max(pp)
        n_ref = min(n_hi, math.ceil(L / pp))
        stage_answers, totals = [], []
        for f in frames:
            ans = self.solve_stage(t, f, k, n_hi, n_ref)
            stage_answers.append(ans)
            totals.append(np.array([c + k * f.fixed_mb + f.fixed_iter for c, _ in ans]))
        split = [L] if pp == 1 else min_max_partition(totals, L)
        if split is None or not all(math.isfinite(totals[i][n - 1]) for i, n in enumerate(split)):
            return None
        layers: List[LayerStrategy] = []
        for i, n in enumerate(split):
            layers += [t.strategies[s] for s in stage_answers[i][n - 1][1]]
        plan = Plan(world_size=self.num_gpus, pp_deg=pp, pp_division=list(split), global_bsz=cand.global_bsz,
                    chunks=cand.chunks, layers=layers, vocab=cand.vocab, pipeline_type=cand.pipeline_type)
        pred = self.cost.evaluate(plan)
        plan.predicted = {"iter_time_s": round(pred.iter_time_s, 6), "tokens_per_s": round(pred.tokens_per_s, 1),
                          "peak_mem_gb": [round(g, 3) for g in pred.peak_mem_gb]}
        return Result(cand, plan, pred)

    # ---------------------------------------------------------------- the search
    def run(self, top_k: int = 5, progress: bool = True) -> List[Result]:
        cands = self.candidates()
        self.stats.candidates = len(cands)
        if not cands:
            raise UserError(
                f"no candidate plan: no batch size in {self.batch_sizes} splits into micro-batches that the "
                f"data-parallel degrees of {self.num_gpus} GPUs divide (with --max-tp={self.space.max_tp}); "
                f"use a global batch size that is a multiple of {self.num_gpus}")
        seq = self.model.seq_length
        scored = []
        for c in cands:
            frames = self._frames(c)
            scored.append((c.global_bsz * seq / self.lower_bound(c, frames), c, frames))
        scored.sort(key=lambda x: -x[0])
        bar = _progress(len(scored), progress)
        best: Dict[Tuple, Result] = {}  # the best plan of every pipeline shape seen
        stats = self.stats

        def kth() -> float:
            vals = sorted((r.tokens_per_s for r in best.values()), reverse=True)
            return vals[top_k - 1] if len(vals) >= top_k else -math.inf

        def worth(ub: float, c: Candidate) -> bool:
            r = best.get(c.shape)
            return ub > kth() and (r is None or ub > r.tokens_per_s)

        def work(item) -> Optional[Result]:
            _, c, frames = item
            if self.min_memory(c, frames) > self.budget:
                with stats.lock:
                    stats.pruned_by_memory += 1
                return None
            if not worth(c.global_bsz * seq / self.memory_aware_bound(c, frames), c):
                with stats.lock:
                    stats.pruned_by_bound += 1
                return None
            with stats.lock:
                stats.evaluated += 1
            return self.evaluate(c, frames)

        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        try:
            i, done = 0, False
            while i < len(scored) and not done:
                batch = []
                while i < len(scored) and len(batch) < self.threads:
                    ub, c, _ = scored[i]
                    if ub <= kth():  # sorted by this bound: nothing after it can enter the top k
                        done = True
                        break
                    i += 1
                    bar.update(1)
                    if worth(ub, c):
                        batch.append(scored[i - 1])
                    else:
                        stats.pruned_by_bound += 1
                results = list(pool.map(work, batch)) if pool else [work(b) for b in batch]
                for r in results:
                    if r is None:
                        continue
                    old = best.get(r.candidate.shape)
                    if old is None or r.sort_key() < old.sort_key():
                        best[r.candidate.shape] = r
            stats.pruned_by_bound += len(scored) - i
            bar.update(len(scored) - bar.n)
        finally:
            bar.close()
            if pool:
                pool.shutdown()
        if not best:
            raise self._infeasible(scored)
        return sorted(best.values(), key=Result.sort_key)[:top_k]

    def _infeasible(self, scored) -> InfeasibleError:
        best = None
        for _, c, frames in scored:
            m = self.min_memory(c, frames)
            if best is None or m < best[0]:
                best = (m, c)
        if best[0] <= self.budget:  # the DP and the memory bound disagree: a bug, not a user error
            raise RuntimeError(f"search found no plan although {best[1]} fits in memory")
        need_gb = math.ceil(self.cost.reserved(best[0]) / GiB * 100) / 100
        c = best[1]
        return InfeasibleError(
            f"no plan fits in {self.memory_gb:g} GB per GPU: the smallest budget that fits is {need_gb:.2f} GB "
            f"(pp={c.pp}, global batch {c.global_bsz} in {c.chunks} micro-batches); "
            f"raise --memory-gb to at least {need_gb:.2f}, use more GPUs or a smaller batch")


# -------------------------------------------------------------------- helpers

def _pareto(idx: np.ndarray, cost: np.ndarray, mem: np.ndarray, group: np.ndarray):
    """Drop strategies another strategy of the same layout beats on both time and memory."""
    order = np.lexsort((idx, mem, cost, group))
    keep = []
    last_group, best_mem = None, math.inf
    for j in order:
        if group[j] != last_group:
            last_group, best_mem = group[j], math.inf
        if mem[j] < best_mem:
            keep.append(j)
            best_mem = mem[j]
    keep = np.sort(np.array(keep, dtype=np.int64))
    return idx[keep], cost[keep], mem[keep]


def lp_bound(cost: np.ndarray, mem: np.ndarray, n: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Lower bound on the cost of n alike layers whose memory must stay within `room` (per n).

    The linear relaxation of choosing one strategy per layer: n x the lower convex envelope of
    the (memory, cost) points at room / n; inf where even the smallest memory does not fit.
    """
    order = np.lexsort((cost, mem))
    m, c = mem[order], cost[order]
    before = np.minimum.accumulate(np.concatenate(([np.inf], c[:-1])))
    m, c = m[c < before], c[c < before]
    hm, hc = [m[0]], [c[0]]
    for x, y in zip(m[1:], c[1:]):
        while len(hm) >= 2 and (hc[-1] - hc[-2]) * (x - hm[-2]) >= (y - hc[-2]) * (hm[-1] - hm[-2]):
            hm.pop()
            hc.pop()
        hm.append(x)
        hc.append(y)
    n = np.asarray(n, dtype=float)
    per = np.asarray(room, dtype=float) / n
    g = np.interp(per, hm, hc)
    return np.where(per >= hm[0], n * g, np.inf)


def min_max_partition(costs: Sequence[np.ndarray], total: int) -> Optional[List[int]]:
    """Layer counts n_i >= 1 summing to `total` that minimise max_i costs[i][n_i - 1].

    Every stage's layers are alike, so only the counts matter; a stage's cost is made monotone in
    n (a longer stage never counts as cheaper), then the smallest threshold whose largest
    admissible counts add up to `total` is found by bisection.
    """
    mono = [np.maximum.accumulate(np.asarray(c, dtype=float)) for c in costs]
    if sum(len(m) for m in mono) < total or len(mono) > total:
        return None
    values = np.unique(np.concatenate(mono))
    values = values[np.isfinite(values)]

    def caps(x: float) -> List[int]:
        return [int(np.searchsorted(m, x, side="right")) for m in mono]

    lo, hi = 0, len(values) - 1
    if hi < 0 or sum(caps(values[hi])) < total or min(caps(values[hi])) < 1:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        c = caps(values[mid])
        if sum(c) >= total and min(c) >= 1:
            hi = mid
        else:
            lo = mid + 1
    n = caps(values[lo])
    while sum(n) > total:  # shorten the currently most expensive stage that can give a layer
        i = max((j for j in range(len(n)) if n[j] > 1), key=lambda j: (mono[j][n[j] - 1], n[j], -j))
        n[i] -= 1
    return n


class _NoBar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, file=sys.stderr, unit="cand", desc="search", leave=False)
