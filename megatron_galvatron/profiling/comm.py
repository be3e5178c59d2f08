"""Collective, p2p and overlap measurements across all ranks of a torchrun job -> hardware.json.

Every rank runs the same loops in the same order, so each measurement is one collective call
made at once by every group of a partition of the world: all consecutive groups of size n
([0..n-1], [n..2n-1], ...) or all strided ones ([i, i+W/n, ...]), as the runtime's TP and DP
groups run side by side. A point's time is the slowest rank's, as a collective ends when its
last member does. Bytes follow the nccl-tests convention (docs/profile_format.md): the full
buffer (all-reduced tensor, all-gather output, reduce-scatter input, all-to-all buffer).
"""
import os
import socket
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron_galvatron.errors import UserError
from megatron_galvatron.layout import Layout
from megatron_galvatron.parallel_state import GroupCache
from megatron_galvatron.profile_format import COLLECTIVES, HARDWARE_SCHEMA, bus_factor
from megatron_galvatron.profiling.fit import comm_entry
from megatron_galvatron.profiling.hardware import (
    HostAhead,
    Stopwatch,
    command_line,
    describe,
    host_seconds,
    median,
    synchronize,
)
from megatron_galvatron.progress import Progress

LAYOUTS = ("consec", "strided")
BUFFER_DTYPE = torch.float32  # gradients are reduced in fp32; per byte bf16 costs the same


@dataclass
class CommSettings:
    sizes: List[int]          # bytes, ascending
    warmup: int = 3
    iters: int = 20
    overlap_bytes: int = 256 * 2 ** 20
    overlap_reps: int = 5
    progress: bool = True


def group_sizes(world: int) -> List[int]:
    """Powers of two up to the world size, plus the world size; only sizes that tile the world."""
    out, n = [], 2
    while n <= world:
        out.append(n)
        n *= 2
    if world >= 2 and world not in out:
        out.append(world)
    return [n for n in out if world % n == 0]


def partition(world: int, n: int, layout: str) -> List[Tuple[int, ...]]:
    """The groups of size n covering the world, laid out as the runtime lays out TP groups."""
    return Layout(tp=n, tp_consec=layout == "consec", sp=False).groups(range(world))[0]


class Topology:
    """Which node each rank is on, from torchrun's node rank (GROUP_RANK) or the host name."""

    def __init__(self, rank: int, world: int):
        me = os.environ.get("GROUP_RANK") or socket.gethostname()
        nodes: List[Optional[str]] = [None] * world
        if world > 1:
            dist.all_gather_object(nodes, me)
        else:
            nodes = [me]
        ids = {n: i for i, n in enumerate(dict.fromkeys(nodes))}
        self.node_of = [ids[n] for n in nodes]
        self.num_nodes = len(ids)
        self.rank, self.world = rank, world
        per_node = [self.node_of.count(i) for i in range(self.num_nodes)]
        self.gpus_per_node = per_node[0]
        self.uniform = len(set(per_node)) == 1

    def spans_nodes(self, ranks: Sequence[int]) -> bool:
        return len({self.node_of[r] for r in ranks}) > 1


def _collective_call(op: str, nbytes: int, n: int, group, inp: torch.Tensor,
                     out: torch.Tensor) -> Callable[[], None]:
    elem = torch.tensor([], dtype=BUFFER_DTYPE).element_size()
    full = max(n, nbytes // elem // n * n)
    if op == "all_reduce":
        buf = inp[:full]
        return lambda: dist.all_reduce(buf, group=group)
    if op == "all_gather":
        src, dst = inp[:full // n], out[:full]
        return lambda: dist.all_gather_into_tensor(dst, src, group=group)
    if op == "reduce_scatter":
        src, dst = inp[:full], out[:full // n]
        return lambda: dist.reduce_scatter_tensor(dst, src, group=group)
    if op == "all_to_all":
        src, dst = inp[:full], out[:full]
        return lambda: dist.all_to_all_single(dst, src, group=group)
    raise ValueError(op)


def _time_block(fn: Callable[[], None], device: torch.device, warmup: int, iters: int,
                ahead: HostAhead) -> float:
    """Median seconds of one call over `iters` back-to-back calls, all ranks started together.
    The median, not the mean: a descheduled process (CPU runs, shared hosts) would otherwise
    turn one slow call into a slow point."""
    host = 0.0
    for _ in range(warmup):
        host, _ = host_seconds(fn)
    synchronize(device)
    dist.barrier()
    ahead.hold(2 * iters * host + 1e-3)
    watches = [Stopwatch(device) for _ in range(iters)]
    for sw in watches:
        sw.start()
        fn()
        sw.stop()
    return median([sw.seconds() for sw in watches])


class CommProfiler:
    def __init__(self, device: torch.device, settings: CommSettings):
        self.device, self.s = device, settings
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.topo = Topology(self.rank, self.world)
        if not self.topo.uniform:
            raise UserError(f"the {self.world} ranks are spread unevenly over {self.topo.num_nodes} nodes: "
                            f"launch the same number of processes on every node")
        self.groups = GroupCache(self.world)
        self.ahead = HostAhead(device)
        elems = max(settings.sizes) // torch.tensor([], dtype=BUFFER_DTYPE).element_size() + self.world
        self.inp = torch.ones(elems, dtype=BUFFER_DTYPE, device=device)
        self.out = torch.zeros(elems, dtype=BUFFER_DTYPE, device=device)

    # ---------------------------------------------------------------- plan of the sweep
    def configs(self) -> List[Tuple[int, str]]:
        out = []
        for n in group_sizes(self.world):
            for layout in LAYOUTS:
                if layout == "strided" and n == self.world:
                    continue  # one group of everyone: the same group as consec
                out.append((n, layout))
        return out

    def pp_degrees(self) -> List[int]:
        return group_sizes(self.world)

    def steps(self) -> int:
        per = len(self.s.sizes)
        return len(COLLECTIVES) * len(self.configs()) * per + len(self.pp_degrees()) * per + 1

    def _mine(self, groups: List[Tuple[int, ...]]) -> Tuple[Tuple[int, ...], dist.ProcessGroup]:
        """This rank's group of a partition, every group of it created (on every rank alike)."""
        for g in groups:
            self.groups.create(g)
        ranks = next(g for g in groups if self.rank in g)
        return ranks, self.groups[ranks]

    # ---------------------------------------------------------------- measurements
    def collectives(self, bar) -> Dict[str, Dict[str, Dict]]:
        local: List[float] = []
        index: List[Tuple[str, int, str, Tuple[int, ...]]] = []
        for n, layout in self.configs():
            ranks, group = self._mine(partition(self.world, n, layout))
            for op in COLLECTIVES:
                # the first call on a group builds its communicator: keep that out of the timings
                _collective_call(op, self.s.sizes[0], n, group, self.inp, self.out)()
                for nbytes in self.s.sizes:
                    fn = _collective_call(op, nbytes, n, group, self.inp, self.out)
                    local.append(_time_block(fn, self.device, self.s.warmup, self.s.iters, self.ahead))
                    bar.update(1)
                index.append((op, n, layout, ranks))
        slowest = self._max_over_ranks(local)
        table: Dict[str, Dict[str, Dict]] = {op: {} for op in COLLECTIVES}
        k = len(self.s.sizes)
        for j, (op, n, layout, ranks) in enumerate(index):
            pts = [[float(b), t] for b, t in zip(self.s.sizes, slowest[j * k:(j + 1) * k])]
            entry = comm_entry(pts, bus_factor(op, n))
            entry["spans_nodes"] = self._spans(n, layout)
            table[op][f"{n}_{layout}"] = entry
        return table

    def _spans(self, n: int, layout: str) -> bool:
        return any(self.topo.spans_nodes(g) for g in partition(self.world, n, layout))

    def p2p(self, bar) -> Dict[str, Dict]:
        """One-way time between a rank and its peer in the next stage, from ping-pong round trips:
        stages 2k and 2k+1 exchange at once, as every stage boundary of a pipeline is busy."""
        local, spans = [], {}
        for pp in self.pp_degrees():
            sw_ = self.world // pp
            stage = self.rank // sw_
            peer = None
            if stage % 2 == 0 and stage + 1 < pp:
                peer = self.rank + sw_
            elif stage % 2 == 1:
                peer = self.rank - sw_
            spans[pp] = any(self.topo.spans_nodes((r, r + sw_)) for r in range(self.world - sw_))
            for nbytes in self.s.sizes:
                elems = max(1, nbytes // self.inp.element_size())
                buf = self.inp[:elems]
                first = stage % 2 == 0

                def ping(buf=buf, peer=peer, first=first):
                    if peer is None:
                        return
                    # one-op batches, as pipeline/p2p.py sends: on NCCL a batch of its own does not
                    # serialise with the other pairs' traffic on the default group
                    for op in ((dist.isend, dist.irecv) if first else (dist.irecv, dist.isend)):
                        for req in dist.batch_isend_irecv([dist.P2POp(op, buf, peer)]):
                            req.wait()
                local.append(_time_block(ping, self.device, self.s.warmup, self.s.iters, self.ahead) / 2)
                bar.update(1)
        slowest = self._max_over_ranks(local)
        out, k = {}, len(self.s.sizes)
        for j, pp in enumerate(self.pp_degrees()):
            pts = [[float(b), t] for b, t in zip(self.s.sizes, slowest[j * k:(j + 1) * k])]
            entry = comm_entry(pts, 1.0)
            entry["spans_nodes"] = spans[pp]
            out[str(pp)] = entry
        return out

    def overlap(self) -> Dict:
        """Slowdown of a matmul stream and a collective on a second stream when run together: the
        all-reduce's at the top level, and each collective's own in 'by_collective' (FSDP's
        all-gathers and reduce-scatters contend differently from DDP's all-reduce)."""
        if self.device.type != "cuda":
            return {"compute_slowdown": 1.0, "comm_slowdown": 1.0, "note": "not measured on cpu"}
        n = self.topo.gpus_per_node if self.topo.gpus_per_node > 1 else self.world
        _, group = self._mine(partition(self.world, n, "consec"))
        by_op = {op: measure_overlap(self.device, group, self.s.overlap_bytes, self.s.overlap_reps, n,
                                     self._max_over_ranks, op)
                 for op in ("all_reduce", "all_gather", "reduce_scatter")}
        out = dict(by_op["all_reduce"])
        out["by_collective"] = {op: {k: m[k] for k in ("compute_slowdown", "comm_slowdown")} for op, m in by_op.items()}
        return out

    def _max_over_ranks(self, xs: List[float]) -> List[float]:
        t = torch.tensor(xs, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def run(self) -> Dict:
        with Progress(self.steps(), "profile_comm", unit="pt", enabled=self.s.progress and self.rank == 0) as bar:
            collectives = self.collectives(bar)
            p2p = self.p2p(bar)
            overlap = self.overlap()
            bar.update(1)
        hw = describe(self.device, self.world, self.topo.num_nodes)
        hw["gpus_per_node"] = self.topo.gpus_per_node
        return {
            "schema": HARDWARE_SCHEMA,
            "hardware": hw,
            "command": command_line(),
            "buffer_dtype": str(BUFFER_DTYPE).replace("torch.", ""),
            "settings": {"sizes_bytes": self.s.sizes, "warmup": self.s.warmup, "iters": self.s.iters},
            "collectives": collectives,
            "p2p": p2p,
            "overlap": overlap,
        }


def collective_call(op: str, nbytes: int, group, group_size: int,
                    device: torch.device) -> Tuple[Callable[[], None], torch.Tensor, torch.Tensor]:
    """(call, full buffer, shard): one collective over fp32 buffers whose larger side (the
    all-reduced buffer, the gathered output, the reduce-scattered input) holds `nbytes`."""
    shard = torch.ones(nbytes // 4 // group_size, dtype=torch.float32, device=device)
    full = torch.ones(shard.numel() * group_size, dtype=torch.float32, device=device)
    calls = {"all_reduce": lambda: dist.all_reduce(full, group=group),
             "all_gather": lambda: dist.all_gather_into_tensor(full, shard, group=group),
             "reduce_scatter": lambda: dist.reduce_scatter_tensor(shard, full, group=group)}
    return calls[op], full, shard


def measure_overlap(device: torch.device, group, nbytes: int, reps: int, group_size: int,
                    max_over_ranks: Callable[[List[float]], List[float]], op: str = "all_reduce") -> Dict:
    """Time bf16 matmuls (default stream) and a collective `op` of `nbytes` (its larger side; side
    stream) alone and together, each with CUDA events on its own stream. The matmul count is
    chosen so both take about as long, which is when they contend the most."""
    run_op, _, _ = collective_call(op, nbytes, group, group_size, device)
    a = torch.randn(4096, 4096, dtype=torch.bfloat16, device=device)
    b = torch.randn(4096, 4096, dtype=torch.bfloat16, device=device)
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)

    def comm():
        with torch.cuda.stream(side):
            run_op()

    def one_matmul():
        torch.mm(a, b)

    t_mm = _alone(one_matmul, device, main, 3, 10)
    t_comm = _alone(comm, device, side, 2, 3)
    k = int(max_over_ranks([max(1.0, round(t_comm / max(t_mm, 1e-9)))])[0])

    def compute():
        for _ in range(k):
            torch.mm(a, b)

    alone_c, alone_m, both_c, both_m = [], [], [], []
    for _ in range(reps):
        alone_c.append(_alone(compute, device, main, 0, 1))
        alone_m.append(_alone(comm, device, side, 0, 1))
        synchronize(device)
        dist.barrier()
        sc, sm = Stopwatch(device, main), Stopwatch(device, side)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            sm.start()
            run_op()
            sm.stop()
        sc.start()
        compute()
        sc.stop()
        synchronize(device)
        both_c.append(sc.seconds())
        both_m.append(sm.seconds())
    ac, am, bc, bm = max_over_ranks([median(alone_c), median(alone_m), median(both_c), median(both_m)])
    return {"compute_slowdown": max(1.0, bc / ac), "comm_slowdown": max(1.0, bm / am),
            "compute_alone_s": ac, "comm_alone_s": am, "compute_overlapped_s": bc, "comm_overlapped_s": bm,
            "method": f"{k} bf16 4096^3 matmuls on the default stream vs {op} of {nbytes} bytes over "
                      f"{group_size} ranks on a side stream, CUDA events on each stream, median of {reps}"}


def _alone(fn: Callable[[], None], device: torch.device, stream, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    dist.barrier()
    times = []
    for _ in range(iters):
        sw = Stopwatch(device, stream)
        sw.start()
        fn()
        sw.stop()
        times.append(sw.seconds())
    return median(times)
