"""Megatron-core's GPTDataset sample order (`--data-order megatron`), so that a run here and a
Megatron run on the same .bin/.idx files, --seed, --split and sample counts see the same
samples in the same order and their loss curves compare sample for sample.

What megatron-core (0.16) does, restated:
- The split cuts *sequences* (not documents) into contiguous ranges: with cumulative normalized
  weights c_0 = 0 <= c_1 <= c_2 <= c_3, split s holds sequences [round(c_s N), round(c_{s+1} N)),
  and a split of weight 0 does not exist.
- Each split draws from its own numpy RandomState(seed), in this order: the split's sequence ids
  tiled over E epochs are shuffled as one array; then the packed samples' order is one shuffle
  of all of them. When the last epoch contributes fewer than 80% of an epoch's samples, that epoch
  is shuffled apart from the others, in both shuffles, so its few samples still come last.
- Samples pack the shuffled stream as in gpt_dataset.PackedSamples (the same windows).
- One prefix with a weight ("1.0 P") goes through Megatron's blending path, which builds its
  dataset for ceil(n * 1.005) samples (its surplus), and so may take one epoch more than "P".
Several weighted prefixes are not reproduced (Megatron's greedy blend is not restated here).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from megatron_galvatron.data.errors import DataError, sample_index
from megatron_galvatron.data.gpt_dataset import PackedSamples, epochs_needed, parse_split
from megatron_galvatron.data.indexed_dataset import IndexedDataset

# megatron-core's BlendedMegatronDatasetConfig.mid_level_dataset_surplus default
BLEND_SURPLUS = 0.005
# megatron-core separates the final epoch when it holds fewer than this share of an epoch
SEPARATE_FINAL_EPOCH_BELOW = 0.80


def megatron_split_ranges(split: str, num_sequences: int) -> list[Optional[tuple[int, int]]]:
    """Sequence range [lo, hi) per split, None for a split of weight 0 (Megatron's split matrix)."""
    weights = parse_split(split)
    bounds = [0.0]
    for w in weights:
        bounds.append(bounds[-1] + w)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.append(None if b <= a else (int(round(a * num_sequences)), int(round(b * num_sequences))))
    return out


class MegatronOrderGPTDataset:
    """Samples of seq_length + 1 tokens from sequences [lo, hi) of `indexed`, in megatron-core's order.

    len() is num_samples (Megatron builds whole epochs and its sampler reads the first ones).
    Exposed for inspection: num_epochs, separate_final_epoch, sequence_order, shuffle_index.
    """

    def __init__(self, indexed: IndexedDataset, sequences: tuple[int, int], seq_length: int,
                 num_samples: int, seed: int, name: str = "", build_samples: Optional[int] = None):
        if seq_length < 2:
            raise DataError(f"--data-order megatron needs seq_length >= 2 (as megatron-core), got {seq_length}")
        if num_samples < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        self.name = name or indexed.path_prefix
        self.num_samples = int(num_samples)
        built_for = self.num_samples if build_samples is None else int(build_samples)
        lo, hi = sequences
        if not 0 <= lo < hi <= len(indexed):
            raise DataError(f"{self.name}: sequence range [{lo}, {hi}) is empty or outside the "
                            f"{len(indexed)} sequences")
        lengths = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        tokens_per_epoch = int(lengths[lo:hi].sum())
        if tokens_per_epoch <= 1:
            raise DataError(f"{self.name}: sequences [{lo}, {hi}) hold {tokens_per_epoch} tokens; "
                            f"give the split more data")
        epochs = epochs_needed(built_for, seq_length, tokens_per_epoch)
        per_epoch = (tokens_per_epoch - 1) // seq_length
        before_last = ((epochs - 1) * tokens_per_epoch - 1) // seq_length
        self.num_epochs = epochs
        self.separate_final_epoch = epochs > 1 and (
            built_for - before_last < int(SEPARATE_FINAL_EPOCH_BELOW * per_epoch))

        rs = np.random.RandomState(seed)
        ids = np.arange(lo, hi, dtype=np.int32)
        if self.separate_final_epoch:
            order = np.concatenate([_shuffled(np.tile(ids, epochs - 1), rs), _shuffled(ids.copy(), rs)])
        else:
            order = _shuffled(np.tile(ids, epochs), rs)
        self.packed = PackedSamples(indexed, order, seq_length)
        self.sequence_order = self.packed.sequence_order
        total = len(self.packed)
        first = before_last if self.separate_final_epoch else total
        index_dtype = np.uint32 if total < np.iinfo(np.uint32).max - 1 else np.int64
        self.shuffle_index = np.concatenate([
            _shuffled(np.arange(0, first, dtype=index_dtype), rs),
            _shuffled(np.arange(first, total, dtype=index_dtype), rs) if first < total
            else np.zeros(0, dtype=index_dtype)])
        if total < self.num_samples:
            raise DataError(f"{self.name}: built {total} samples, {self.num_samples} requested")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i) -> np.ndarray:
        return self.packed[int(self.shuffle_index[sample_index(i, self.num_samples)])]


def _shuffled(a: np.ndarray, rs: np.random.RandomState) -> np.ndarray:
    rs.shuffle(a)
    return a


def build_megatron_order_datasets(pairs: list[tuple[float, str]], weighted: bool, split: str,
                                  seq_length: int, seed: int, num_samples) -> tuple:
    """(train, valid, test) as megatron-core's builder makes them for one prefix; None for a split
    that Megatron leaves out (weight 0) or that no sample is asked of."""
    if len(pairs) != 1:
        raise DataError(f"--data-order megatron reproduces one --data-path prefix, got {len(pairs)}; "
                        f"use --data-order epochs to blend several")
    prefix = pairs[0][1]
    indexed = IndexedDataset(prefix)
    ranges = megatron_split_ranges(split, len(indexed))
    out = []
    for s, name in enumerate(("train", "valid", "test")):
        n = int(num_samples[s])
        if n == 0 or ranges[s] is None:
            out.append(None)
            continue
        if ranges[s][0] == ranges[s][1]:
            raise DataError(f"--split {split}: the {name} split of {prefix} has no sequences; "
                            f"give it more data or a larger {name} weight")
        # a weighted prefix is a blend of one: Megatron builds it with its surplus
        build = int(math.ceil(math.ceil(n * 1.0) * (1 + BLEND_SURPLUS))) if weighted else n
        out.append(MegatronOrderGPTDataset(indexed, ranges[s], seq_length, n, seed,
                                           name=f"{prefix} ({name})", build_samples=build))
    return tuple(out)
