"""A cost term's time, split by what the cost model needs to tell apart."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Time:
    per_mb: float    # on the critical path of every micro-batch
    per_iter: float  # once per iteration
    compute: float = 0.0    # the part of per_mb that is compute (priced at the sustained clock)
    busy_iter: float = 0.0  # the part of per_iter the GPU computes (memory-bound passes)
    busy_mb: float = 0.0    # the part of per_mb that is compute slowed by overlapping communication
