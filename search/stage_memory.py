"""What a unit holds at its stage's peak: micro-batches in flight, model states, the ZeRO
gradients that exist only from the first backward on, and what counts against the allocator's
budget. Bytes per rank."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy as np

GiB = float(2 ** 30)
FP8 = 1
BF16 = 2
FP32 = 4
ADAM_STATES = 8  # fp32 m and v


def microbatches_in_flight(pipeline_type: str, chunks: int, pp_deg: int, stage: int) -> int:
    """Micro-batches whose activations a stage holds at its peak."""
    if pipeline_type == "gpipe":
        return chunks
    return min(chunks, pp_deg - stage)


class InFlight(NamedTuple):
    """Micro-batches whose activations a stage holds when its first backward of the iteration
    starts, and when any later one starts (0: there is none)."""
    first: int
    later: int


def in_flight(pipeline_type: str, chunks: int, pp_deg: int, stage: int) -> InFlight:
    """GPipe runs every forward before the first backward, so each backward starts with one
    micro-batch fewer alive. 1F1B keeps up to pp - stage alive while forwards remain; with
    pp = 1 that is one forward and one backward in turn."""
    first = microbatches_in_flight(pipeline_type, chunks, pp_deg, stage)
    later = chunks - 1 if pipeline_type == "gpipe" else min(pp_deg - stage, chunks - 1)
    return InFlight(first, later)


def persistent_bytes(states, activation, lazy, settled, flight: InFlight):
    """Bytes a unit (or arrays of units) holds at the stage's peak, not counting transients.

    Two moments compete: the start of the iteration's first backward (every in-flight activation
    alive, but none of the gradient state a ZeRO unit only creates in that backward, `lazy`) and
    the start of a later backward (the gradient state complete). Without a later backward the
    other candidate is the end of the only one: activations freed, the gradient state `settled`
    to what remains after its reduce-scatter."""
    first = states - lazy + flight.first * activation
    other = states + flight.later * activation if flight.later else states - lazy + settled
    return np.maximum(first, other)


def budget_bytes(states, activation, lazy, settled, pooled, flight: InFlight, ratio: float):
    """What a unit counts against the allocator's budget, in bytes of tensors on the compute
    stream's scale (the budget is divided by the allocator's reserved/allocated ratio).

    The caching allocator keeps a pool per CUDA stream. FSDP2 writes each ZeRO unit's fp32
    gradient shard (`settled`) on its reduce-scatter stream, into memory the compute stream
    never reuses: reserved = ratio x (the compute stream's peak) + the shards. `pooled` is the
    part of `lazy` that is such a shard from the start (ZeRO-3, reduce-scattered every
    micro-batch); ZeRO-2's unsharded accumulation stays on the compute stream."""
    return persistent_bytes(states - pooled, activation, lazy - pooled, 0.0, flight) + settled / ratio


def zero_gradient_bytes(params: float, dp: int, dp_type: str) -> Tuple[float, float]:
    """(lazy, settled) of `persistent_bytes` for a unit holding `params`. ZeRO-3 reduce-scatters
    every micro-batch into an fp32 gradient shard; ZeRO-2 accumulates the unsharded fp32
    gradient until the last micro-batch's reduce-scatter leaves the shard. A replicated unit's
    flat gradient buffer exists from the start."""
    if not is_sharded(dp_type, dp):
        return 0.0, 0.0
    shard = FP32 * params / dp
    return (shard if dp_type == "zero3" else FP32 * params), shard


def is_sharded(dp_type: str, dp: int) -> bool:
    """Whether the runtime wraps the unit in FSDP (sharded fp32 masters, gathered bf16 weights)
    rather than replicating it (fp32 masters, a bf16 compute copy, a flat fp32 gradient buffer)."""
    return dp_type in ("zero2", "zero3") and dp > 1


def model_state_bytes(params: float, dp: int, dp_type: str, compute_copy: bool = False) -> float:
    """Bytes a unit holds for `params` (the rank's TP shard) at the stage's peak, the start of a
    backward with every layer of the stage between its forward and its backward.

    Replicated: fp32 weights, the fp32 flat gradient buffer, Adam m and v (16 B). ZeRO-3: all of
    that sharded. ZeRO-2 (FSDP2 without resharding after forward): the fp32 weight and Adam
    shards, the bf16 weights gathered in the forward and kept until the layer's backward, and the
    unsharded fp32 gradient FSDP2 accumulates over micro-batches until the last one's
    reduce-scatter. The ZeRO gradients exist only from the first backward on
    (`zero_gradient_bytes`, `persistent_bytes`).
    `compute_copy`: a replicated unit computing on a bf16 copy of its fp32 master weights (2 B)."""
    if not is_sharded(dp_type, dp):
        if dp_type not in ("ddp", "zero2", "zero3"):
            raise ValueError(dp_type)
        return (FP32 + FP32 + ADAM_STATES + (BF16 if compute_copy else 0)) * params
    if dp_type == "zero2":
        return ((FP32 + ADAM_STATES) / dp + BF16 + FP32) * params
    return (FP32 + FP32 + ADAM_STATES) / dp * params



@dataclass(frozen=True)
class Memory:
    states: float        # parameters, gradients, optimizer states
    activation: float    # kept per in-flight micro-batch
    transient: float     # alive only while this unit computes (the stage peak takes the largest)
    lazy: float = 0.0     # part of `states` created only in the iteration's first backward
    settled: float = 0.0  # what `lazy` becomes once the last backward's reduce-scatter ran
    pooled: float = 0.0   # part of `lazy` in the reduce-scatter stream's pool (see budget_bytes)

    def persistent(self, flight: InFlight) -> float:
        return float(persistent_bytes(self.states, self.activation, self.lazy, self.settled, flight))

    def budgeted(self, flight: InFlight, ratio: float) -> float:
        return float(budget_bytes(self.states, self.activation, self.lazy, self.settled, self.pooled, flight, ratio))

