"""Synthetic GPT samples for runs without data files: learnable, so loss visibly falls.

Each sample is an arithmetic progression modulo vocab_size with a random start and a small
random step: after two tokens the rest is determined, and even a bigram model can cut the
loss from log(vocab_size) to log(max_step) quickly.
"""
from __future__ import annotations

import numpy as np

from megatron_galvatron.data.errors import DataError, sample_index

MAX_STEP = 8


class MockGPTDataset:
    """Sample i depends only on (seed, i): an int64 array of seq_length + 1 ids in [0, vocab_size)."""

    def __init__(self, seq_length: int, vocab_size: int, seed: int, num_samples: int):
        if seq_length < 1 or vocab_size < 2 or num_samples < 0:
            raise DataError(f"MockGPTDataset needs seq_length >= 1, vocab_size >= 2, num_samples >= 0; "
                            f"got {seq_length}, {vocab_size}, {num_samples}")
        self.seq_length = int(seq_length)
        self.vocab_size = int(vocab_size)
        self.seed = int(seed) % 2**64
        self.num_samples = int(num_samples)
        self._max_step = min(MAX_STEP, self.vocab_size - 1)
        self._ramp = np.arange(self.seq_length + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i) -> np.ndarray:
        i = sample_index(i, self.num_samples)
        rng = np.random.default_rng([self.seed, i])
        start = int(rng.integers(self.vocab_size))
        step = int(rng.integers(1, self._max_step + 1))
        return (start + step * self._ramp) % self.vocab_size
