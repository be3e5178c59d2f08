"""Time of one collective or p2p transfer on the searched cluster, from the hardware profile.

Bandwidths are bus bandwidths (the nccl-tests convention): a collective over n ranks moving a
buffer of `nbytes` takes latency + factor(n) * nbytes / busbw, with factor 2(n-1)/n for
all-reduce and (n-1)/n for all-gather, reduce-scatter and all-to-all. `nbytes` is the full
buffer: the all-reduced tensor, the all-gather output, the reduce-scatter input.

A group is described by its size and rank stride starting at rank 0 of a stage (stages start on
node boundaries or pack inside one node). The profile entry used is the one measured on a group
of the same size whose ranks span nodes exactly when the requested group does; failing that, the
nearest measured size of the same kind (bus bandwidth barely depends on size).

An entry with segments (a piecewise fit over message sizes, docs/profile_format.md) prices
`nbytes` with the line of the segment it falls in; latency and bandwidth then both depend on the
size, since NCCL switches protocol and algorithm as messages grow.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

from megatron_galvatron.layout import Layout
from megatron_galvatron.profile_format import (
    REQUIRED_COLLECTIVES,
    CommFit,
    HardwareProfile,
    ProfileError,
    bus_factor,
)


def spans_nodes(size: int, stride: int, gpus_per_node: int) -> bool:
    return (size - 1) * stride >= gpus_per_node


class Network:
    def __init__(self, hw: HardwareProfile, num_gpus: int, gpus_per_node: int):
        self.hw = hw
        self.num_gpus = num_gpus
        self.gpus_per_node = gpus_per_node
        self.compute_slowdown = hw.compute_slowdown
        self.comm_slowdown = hw.comm_slowdown
        self._cache: Dict[Tuple, Tuple[CommFit, float]] = {}
        # entries by (op, spans_nodes) so that a lookup never mixes NVLink and network numbers
        self._by_kind: Dict[Tuple[str, bool], Dict[Tuple[int, str], CommFit]] = {}
        for op, table in hw.collectives.items():
            for (n, layout), fit in table.items():
                self._by_kind.setdefault((op, self._profiled_spans(n, layout)), {})[(n, layout)] = fit
        for op in REQUIRED_COLLECTIVES:
            if gpus_per_node > 1 and num_gpus > 1 and not self._by_kind.get((op, False)):
                raise ProfileError(f"{hw.path}: no intra-node measurement of {op}; re-run tools/profile_comm.py "
                                   f"on a node with {gpus_per_node} GPUs")
            if num_gpus > gpus_per_node and not self._by_kind.get((op, True)):
                raise ProfileError(f"{hw.path}: no inter-node measurement of {op} (profiled on "
                                   f"{hw.num_nodes} node(s)) but the search spans {num_gpus // gpus_per_node} "
                                   f"nodes: profile on at least 2 nodes")
        if num_gpus > 1 and not hw.p2p:
            raise ProfileError(f"{hw.path}: missing key 'p2p' entries: pipeline stages cannot be priced")

    def _profiled_spans(self, n: int, layout: str) -> bool:
        """Whether the profiler's groups of this entry spanned nodes (they tile its whole world)."""
        stride = Layout(tp=n, tp_consec=layout == "consec", sp=False).strides(self.hw.num_gpus)[0]
        return spans_nodes(n, stride, self.hw.gpus_per_node)

    def _fit(self, op: str, size: int, stride: int) -> CommFit:
        key = (op, size, stride)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        inter = spans_nodes(size, stride, self.gpus_per_node)
        layout = "consec" if stride == 1 else "strided"
        table = self._by_kind.get((op, inter)) or {}
        if not table:  # an optional collective, or a kind the checks above allowed to be absent
            table = self.hw.collectives.get(op, {})
            if not table:
                raise ProfileError(f"{self.hw.path}: no measurement of {op}; re-run tools/profile_comm.py")
        fit = table.get((size, layout)) or table.get((size, "strided" if layout == "consec" else "consec"))
        if fit is None:
            best = min(table, key=lambda k: (abs(math.log2(k[0]) - math.log2(size)), k[1] != layout, -k[0]))
            fit = table[best]
        self._cache[key] = fit
        return fit

    def collective(self, op: str, size: int, stride: int, nbytes: float) -> float:
        """Seconds for `op` over `size` ranks spaced `stride` apart, on a buffer of `nbytes` (see module doc)."""
        if size <= 1 or nbytes <= 0:
            return 0.0
        latency, bandwidth = self._fit(op, size, stride).line(nbytes)
        return latency + bus_factor(op, size) * nbytes / (bandwidth * 1e9)

    def p2p(self, pp_deg: int, stage_world: int, nbytes: float) -> float:
        """Seconds to send `nbytes` from a rank of one stage to its peer in the next stage."""
        if pp_deg <= 1 or nbytes <= 0:
            return 0.0
        fit = self.hw.p2p.get(pp_deg)
        inter = stage_world >= self.gpus_per_node
        if fit is None or self._p2p_spans(pp_deg) != inter:
            same = [k for k in self.hw.p2p if self._p2p_spans(k) == inter] or list(self.hw.p2p)
            fit = self.hw.p2p[min(same, key=lambda k: (abs(math.log2(k) - math.log2(pp_deg)), k))]
        latency, bandwidth = fit.line(nbytes)
        return latency + nbytes / (bandwidth * 1e9)

    def _p2p_spans(self, pp_deg: int) -> bool:
        return self.hw.num_gpus // pp_deg >= self.hw.gpus_per_node

    def overlap(self, compute_s: float, comm_s: float, op: str = "") -> float:
        """Wall time of `compute_s` of compute and `comm_s` of communication (each as long as it takes
        alone) started together on two streams; the slowdowns are the collective `op`'s where the
        profile measured them per collective.

        While both run, compute progresses at 1 / compute_slowdown and communication at
        1 / comm_slowdown of their own speed; whichever finishes first leaves the other to run alone.
        A short all-reduce under a long backward therefore costs only the compute it slowed down, not
        the whole backward times the slowdown. When compute x compute_slowdown equals comm x
        comm_slowdown (the profiler's overlap test makes the two about as long) both end together
        at that time."""
        return self.overlap_many(compute_s, [(comm_s, op)])

    def overlap_many(self, compute_s: float, comms: List[Tuple[float, str]]) -> float:
        """`overlap` for several collectives one after another on the side stream ((seconds, op)
        each). Shorter together than the compute, each slows it by its own measured amount; longer,
        the compute ends first and the rest runs alone, with the slowdowns weighted by the
        collectives' times."""
        comm_s = sum(t for t, _ in comms)
        if comm_s <= 0:
            return compute_s
        if compute_s <= 0:
            return comm_s
        pairs = [(t, self.hw.overlap_by_op.get(op, (self.compute_slowdown, self.comm_slowdown))) for t, op in comms]
        cs = sum(t * p[0] for t, p in pairs) / comm_s
        ms = sum(t * p[1] for t, p in pairs) / comm_s
        if comm_s * ms <= compute_s * cs:
            return compute_s + sum(t * p[1] * (1.0 - 1.0 / p[0]) for t, p in pairs)
        return comm_s + compute_s * cs * (1.0 - 1.0 / ms)
