"""The plan search: enumerate pipeline shapes, solve each stage with the DP, keep the fastest plans.

A candidate fixes pp degree, global batch, micro-batch count, pipeline type and the vocab
strategy. Every stage of it gets a DP over its alike layers that answers every stage length n
at once; a min-max partition over those answers divides the layers so that the slowest stage is
as fast as memory allows. Candidates are visited in order of an upper bound on their throughput
(the linear relaxation of the stage DPs, which respects memory) and the search stops when no
remaining candidate can beat the k-th best pipeline shape found.

Stage peak memory is sum(persistent memory of its layers) + max(transient memory of one layer),
each layer's persistent part counted as it weighs against the allocator's budget
(search.stage_memory.budget_bytes), which is not additive; the DP handles it by reserving a level
tau for the transient and allowing only strategies whose transient is <= tau. The exact optimum
is the best over all levels; the levels solved are the one the linear relaxation settles on, the
top one (both skipped when their relaxation cannot beat what is known), and the level that
minimises memory (so that a budget the minimum says fits always finds a plan).
"""
from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_galvatron.errors import UserError
from megatron_galvatron.layout import Layout
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from search.cost_model import CostModel, Prediction
from search.engine_bounds import StageBounds
from search.pipeline_time import clock_gain_bound
from search.progress import Progress
from search.stage_dp import Surface, Table, canonical_order, lp_bound, lp_mix, min_max_partition
from search.stage_memory import GiB, InFlight, in_flight
from search.strategies import Space, divisors, layer_strategies, vocab_strategies

SURFACE_CACHE_BYTES = 512 << 20  # DP tables kept for reuse across candidates


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
    def global_micro_batch(self) -> int:
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
    stage_objective: List[float]  # the DP's (chunks + pp - 1) x per_mb + per_iter of every stage

    @property
    def tokens_per_s(self) -> float:
        return self.prediction.tokens_per_s

    def sort_key(self) -> Tuple:
        """Fastest first; among equally fast plans the simplest (fewest ZeRO-3 / checkpointed modules)."""
        c, p = self.candidate, self.plan
        fancy = sum((s.dp_type == "zero3") + s.checkpoint for s in p.layers) + (c.vocab.dp_type == "zero3")
        return (-self.tokens_per_s, fancy, max(self.prediction.stage_reserved), c.pp, c.chunks,
                c.pipeline_type != "1f1b", c.vocab.tp, c.vocab.dp_type, c.vocab.sp)


@dataclass
class StageFrame:
    """What a stage's DP depends on besides the table."""

    flight: InFlight
    fixed_mb: float       # vocab + p2p time per micro-batch
    fixed_iter: float     # vocab once-per-iteration time
    vocab_budgeted: float
    vocab_transient: float
    in_layout: Optional[Layout]   # layout the first layer receives from the embedding (first stage)
    out_layout: Optional[Layout]  # layout the LM head wants from the last layer (last stage)


@dataclass
class Stats:
    candidates: int = 0
    evaluated: int = 0
    dp_runs: int = 0
    pruned_by_bound: int = 0
    pruned_by_memory: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Searcher(StageBounds):
    def __init__(self, cost: CostModel, num_gpus: int, memory_gb: float, space: Space,
                 batch_sizes: Sequence[int], pipeline_types: Sequence[str] = ("1f1b", "gpipe"),
                 max_pp: Optional[int] = None, threads: int = 2, fp8_skip: Tuple[int, int] = (0, 0)):
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
        # the first and last layers of the model that stay bf16 when the space has an fp8 recipe
        self.fp8_skip = fp8_skip if space.fp8 else (0, 0)
        self.stats = Stats()
        self._tables: Dict[Tuple[int, int], Optional[Table]] = {}
        self._surfaces: "OrderedDict[Tuple, Surface]" = OrderedDict()
        self._surface_bytes = 0
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

    def table(self, stage_world: int, global_micro_batch: int) -> Optional[Table]:
        key = (stage_world, global_micro_batch)
        if key in self._tables:
            return self._tables[key]
        strategies = layer_strategies(stage_world, global_micro_batch, self.model, self.space)
        if not strategies:
            self._tables[key] = None
            return None
        c = self.cost
        times = [c.layer_time(s, stage_world, global_micro_batch) for s in strategies]
        mems = [c.layer_memory(s, stage_world, global_micro_batch) for s in strategies]
        layouts = sorted({Layout.of(s, stage_world) for s in strategies})
        index = {l: i for i, l in enumerate(layouts)}
        t = Table(strategies,
                  np.array([x.per_mb for x in times]), np.array([x.per_iter for x in times]),
                  np.array([m.states for m in mems]), np.array([m.activation for m in mems]),
                  np.array([m.transient for m in mems]), layouts,
                  np.array([index[Layout.of(s, stage_world)] for s in strategies], dtype=np.int32),
                  {},
                  sorted({Layout.of(v, stage_world)
                          for v in vocab_strategies(stage_world, global_micro_batch, self.model, self.space)}),
                  np.array([m.lazy for m in mems]), np.array([m.settled for m in mems]),
                  np.array([m.pooled for m in mems]), c.ratio,
                  np.array([s.fp8 is not None for s in strategies]))
        every = sorted(set(layouts) | set(t.vocab_layouts))
        t.relayout = {(a, b): c.relayout(stage_world, global_micro_batch, a, b) for a in every for b in every}
        self._tables[key] = t
        return t

    def frame(self, cand: Candidate, stage: int) -> StageFrame:
        if 0 < stage < cand.pp - 1:  # no vocab module: shared by every candidate of this pipeline shape
            key = (cand.pp, cand.chunks, cand.global_micro_batch, cand.pipeline_type, stage)
            hit = self._middle_frames.get(key)
            if hit is None:
                hit = self._middle_frames[key] = self._frame(cand, stage)
            return hit
        return self._frame(cand, stage)

    def _frame(self, cand: Candidate, stage: int) -> StageFrame:
        sw = self.num_gpus // cand.pp
        mb = cand.global_micro_batch
        flight = in_flight(cand.pipeline_type, cand.chunks, cand.pp, stage)
        vt, vm = self.cost.vocab(cand.vocab, sw, mb, cand.pp, stage)
        p2p = ((stage > 0) + (stage < cand.pp - 1)) * self.cost.p2p(cand.pp, sw, mb)
        vl = Layout.of(cand.vocab, sw)
        return StageFrame(flight, vt.per_mb + p2p, vt.per_iter, vm.budgeted(flight, self.cost.ratio), vm.transient,
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

    def partition(self, costs: Sequence[np.ndarray], frames: List[StageFrame]) -> Optional[List[int]]:
        """min_max_partition of the model's layers over the stages, each stage holding at least
        _fewest_layers: those are given to it first, the rest divided as usual."""
        L = self.model.num_layers
        if len(frames) == 1:
            return [L]
        extra = [self._fewest_layers(f) - 1 for f in frames]
        if not any(extra):
            return min_max_partition(costs, L)
        width = len(costs[0])
        shifted = [np.concatenate((np.asarray(c, dtype=float)[e:], np.full(e, np.inf))) for c, e in zip(costs, extra)]
        split = min_max_partition(shifted, L - sum(extra)) if L > sum(extra) else None
        if split is None:
            return None
        out = [n + e for n, e in zip(split, extra)]
        return out if max(out) <= width else None

    # ---------------------------------------------------------------- stage DP
    def _ends(self, frame: StageFrame, n_hi: int) -> Tuple[Optional[Tuple], Optional[Tuple], bool, Tuple[int, ...]]:
        """(layout fed into the first layer, layout the last layer hands over to, reversed, the DP
        positions that may not take an fp8 strategy).

        Alike layers and symmetric re-layout prices make a stage read backwards cost the same, so
        a first stage (embedding in front, nothing after) is solved as a stage with the embedding
        after it: every stage without both ends then shares one DP whatever the vocab strategy.
        Layers --fp8-skip-first/last keeps in bf16 sit next to the embedding (LM head); such a
        stage is read from that end instead, so that they are the DP's first positions whatever
        the stage's length.
        """
        first, last = self.fp8_skip
        if frame.in_layout is not None and frame.out_layout is not None:  # one stage: n is all layers
            off = tuple(range(min(first, n_hi))) + tuple(range(max(first, n_hi - last), n_hi))
            return frame.in_layout, frame.out_layout, False, off
        if frame.in_layout is not None:
            if first:
                return frame.in_layout, None, False, tuple(range(min(first, n_hi)))
            return None, frame.in_layout, True, ()
        if frame.out_layout is not None and last:
            return frame.out_layout, None, True, tuple(range(min(last, n_hi)))
        return None, frame.out_layout, False, ()

    def surface(self, table: Table, k: int, flight: InFlight, level: float, in_layout, n_hi: int,
                out_layout=None, bf16_at: Tuple[int, ...] = ()) -> Surface:
        """The DP of a stage whose layers may reserve `level` bytes for the transient peak (cached);
        the layers at positions `bf16_at` may not take fp8 strategies."""
        allowed = table.transient[table.transient <= level]
        level = float(allowed.max()) if len(allowed) else level  # same strategies, same DP
        if in_layout is None:
            outs = [None] + table.vocab_layouts
        else:
            outs = [out_layout]
        key = (id(table), k, flight, level, in_layout, n_hi, tuple(outs), bf16_at)
        with self.stats.lock:
            hit = self._surfaces.get(key)
            if hit is not None:
                self._surfaces.move_to_end(key)
                return hit
        surf = Surface(table, k, flight, level, in_layout, outs, n_hi, self.budget, bf16_at)
        with self.stats.lock:
            self.stats.dp_runs += 1
            if key in self._surfaces:  # another thread solved it meanwhile
                return self._surfaces[key]
            self._surfaces[key] = surf
            self._surface_bytes += surf.nbytes
            while self._surface_bytes > SURFACE_CACHE_BYTES and len(self._surfaces) > 1:
                _, old = self._surfaces.popitem(last=False)
                self._surface_bytes -= old.nbytes
        return surf

    def stage_answers(self, table: Table, frame: StageFrame, k: int, n_hi: int, n_ref: int
                      ) -> List[Tuple[float, Optional[Surface], float]]:
        """Best (objective, DP surface, reserved level) of the stage for every length n = 1..n_hi."""
        reserve = np.maximum(table.transient, frame.vocab_transient)
        levels = np.unique(reserve)[::-1]
        obj = k * table.per_mb + table.per_iter
        mem = table.budgeted(frame.flight)
        n = np.arange(1, n_hi + 1)
        in_layout, out_layout, _, bf16_at = self._ends(frame, n_hi)
        best_cost = np.full(n_hi, np.inf)
        best: List[Tuple[float, Optional[Surface], float]] = [(math.inf, None, 0.0)] * n_hi
        done = set()

        def room(level: float) -> float:
            return self.budget - frame.vocab_budgeted - level

        def run(level: float) -> None:
            if level in done:
                return
            done.add(level)
            ok = reserve <= level
            lb = lp_bound(obj[ok], mem[ok], n, np.full(n_hi, room(level)))
            if np.all(lb >= best_cost * (1 - 1e-12)):
                return
            surf = self.surface(table, k, frame.flight, level, in_layout, n_hi, out_layout, bf16_at)
            costs = surf.costs(room(level), out_layout)
            for i in np.nonzero(costs < best_cost)[0]:
                best_cost[i] = costs[i]
                best[i] = (float(costs[i]), surf, level)

        # the level the linear relaxation for n_ref settles on, then the top level
        level = float(levels[0])
        for _ in range(len(levels)):
            ok = np.nonzero(reserve <= level)[0]
            mix = lp_mix(obj[ok], mem[ok], room(level) / n_ref)
            if not mix:
                break
            need = float(max(reserve[ok[j]] for j in mix))
            if need >= level:
                break
            level = need
        run(level)
        run(float(levels[0]))
        # the memory-minimising level of every length still without a plan, so that feasibility
        # agrees with min_memory()
        lightest = self.min_memory_levels(table, frame.flight, frame.vocab_transient, n_hi,
                                          self._bf16_layers(frame))[1]
        for i in np.nonzero(~np.isfinite(best_cost))[0]:
            run(float(lightest[i]))
        return best

    # ---------------------------------------------------------------- one candidate
    def evaluate(self, cand: Candidate, frames: Optional[List[StageFrame]] = None) -> Optional[Result]:
        frames = frames or self._frames(cand)
        sw = self.num_gpus // cand.pp
        t = self.table(sw, cand.global_micro_batch)
        L, pp, k = self.model.num_layers, cand.pp, cand.k
        n_hi = self.n_max(pp)
        n_ref = min(n_hi, math.ceil(L / pp))
        answers, totals = [], []
        for f in frames:
            ans = self.stage_answers(t, f, k, n_hi, n_ref)
            answers.append(ans)
            totals.append(np.array([c for c, _, _ in ans]) + k * f.fixed_mb + f.fixed_iter)
        split = self.partition(totals, frames)
        if split is None or not all(math.isfinite(totals[i][n - 1]) for i, n in enumerate(split)):
            return None
        layers: List[LayerStrategy] = []
        objective = [float(totals[i][n - 1]) for i, n in enumerate(split)]
        for i, n in enumerate(split):
            _, surf, level = answers[i][n - 1]
            _, out_layout, backwards, _ = self._ends(frames[i], n_hi)
            picked = surf.solve(n, self.budget - frames[i].vocab_budgeted - level, out_layout)
            if backwards:
                picked.reverse()
            layers += canonical_order([t.strategies[s] for s in picked], sw)
        plan = Plan(world_size=self.num_gpus, pp_deg=pp, pp_division=list(split), global_bsz=cand.global_bsz,
                    chunks=cand.chunks, layers=layers, vocab=cand.vocab, pipeline_type=cand.pipeline_type,
                    compile=self.cost.profile.compiled, gpus_per_node=self.cost.net.gpus_per_node)
        pred = self.cost.evaluate(plan)
        plan.predicted = pred.plan_fields()
        return Result(cand, plan, pred, objective)

    # ---------------------------------------------------------------- the search
    def run(self, top_k: int = 5, progress: bool = True) -> List[Result]:
        with self.cost.memoised():
            return self._run(top_k, progress)

    def _run(self, top_k: int, progress: bool) -> List[Result]:
        cands = self.candidates()
        self.stats.candidates = len(cands)
        if not cands:
            raise UserError(
                f"no candidate plan: no batch size in {self.batch_sizes} splits into micro-batches that the "
                f"data-parallel degrees of {self.num_gpus} GPUs divide (with --max-tp={self.space.max_tp}); "
                f"use a global batch size that is a multiple of {self.num_gpus}")
        seq = self.model.seq_length
        stats = self.stats
        # The bounds price compute at the sustained clock; a plan whose GPUs idle part of the step
        # is predicted faster than that (pipeline_time.clock_scales), by at most clock_gain_bound.
        slow = self.cost.profile.sustained_slowdown
        scored = []
        report = Progress(progress)
        for j, c in enumerate(cands):  # bounds first, so that the likely best plans are solved first
            report.bounds(j, len(cands))
            frames = self._frames(c)
            bound = self.memory_aware_bound(c, frames)  # inf: not even the relaxation fits
            if math.isfinite(bound):
                bound *= 1.0 - clock_gain_bound(slow, c.chunks, c.pp, self.cost.profile.sustained_curve)
                scored.append((c.global_bsz * seq / bound, c, frames))
            else:
                stats.pruned_by_memory += 1
        if not scored:
            raise self._infeasible(cands)
        scored.sort(key=lambda x: -x[0])
        falling = [-ub for ub, _, _ in scored]  # ascending, for bisect
        report.begin_solving()
        best: Dict[Tuple, Result] = {}  # the best plan of every pipeline shape seen

        def kth() -> float:
            vals = sorted((r.tokens_per_s for r in best.values()), reverse=True)
            return vals[top_k - 1] if len(vals) >= top_k else -math.inf

        def worth(ub: float, c: Candidate) -> bool:
            r = best.get(c.shape)
            return ub > kth() and (r is None or ub > r.tokens_per_s)

        def still_open(i: int) -> int:
            """Candidates after the i-th that would be solved if the k-th best plan (while fewer
            are known: the worst found) stayed where it is."""
            floor = kth() if len(best) >= top_k else min((r.tokens_per_s for r in best.values()), default=-math.inf)
            end = bisect.bisect_left(falling, -floor)
            return sum(1 for ub, c, _ in scored[i:end] if best.get(c.shape) is None or ub > best[c.shape].tokens_per_s)

        def work(item) -> Optional[Result]:
            with stats.lock:
                stats.evaluated += 1
            return self.evaluate(item[1], item[2])

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
                report.report(stats.evaluated, lambda: still_open(i), i, len(scored))
            stats.pruned_by_bound += len(scored) - i
        finally:
            if pool:
                pool.shutdown()
        if not best:  # only the relaxation fitted
            raise self._infeasible(cands)
        return sorted(best.values(), key=Result.sort_key)[:top_k]

    def _infeasible(self, cands: List[Candidate]) -> InfeasibleError:
        need, c = min(((self.min_memory(c, self._frames(c)), c) for c in cands), key=lambda x: x[0])
        if need <= self.budget:  # the relaxation and the exact minimum disagree: a bug, not a user error
            raise RuntimeError(f"memory bounds disagree on {c}")
        need_gb = math.ceil(self.cost.reserved(need) / GiB * 100) / 100
        return InfeasibleError(
            f"no plan fits in {self.memory_gb:g} GB per GPU: the smallest budget that fits is {need_gb:.2f} GB "
            f"(pp={c.pp}, global batch {c.global_bsz} in {c.chunks} micro-batches); "
            f"raise --memory-gb to at least {need_gb:.2f}, use more GPUs or a smaller batch")
