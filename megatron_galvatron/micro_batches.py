"""How one step's global batch is cut into micro-batches.

Hetu-Galvatron's runtime cuts a rank's batch with torch.chunk: pieces of ceil(n / chunks)
samples, the last one smaller, and fewer than `chunks` pieces when the ceiling leaves none for
the rest (10 samples in 6 chunks: 2, 2, 2, 2, 2). Its search writes such counts (1024 samples in
41 chunks), so plans here follow the same rule. The cut is made in units of `unit` samples (the
least common multiple of the plan's data-parallel degrees) so that every micro-batch still splits
evenly over each layer's data-parallel ranks; with chunks dividing the batch nothing changes.
"""
from __future__ import annotations

import math
from typing import Iterable, List


def micro_batch_sizes(global_bsz: int, chunks: int, unit: int = 1) -> List[int]:
    """Global micro-batch sizes (samples) in order; global_bsz must be a multiple of unit."""
    units = global_bsz // unit
    per = -(-units // chunks)
    count = -(-units // per)
    return [per * unit] * (count - 1) + [(units - per * (count - 1)) * unit]


def batch_unit(dp_degrees: Iterable[int]) -> int:
    """The smallest sample count every data-parallel degree divides."""
    unit = 1
    for d in dp_degrees:
        unit = unit * d // math.gcd(unit, d)
    return unit
