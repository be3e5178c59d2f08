"""MockGPTDataset: deterministic per (seed, index), in range, and structured enough to learn."""
import numpy as np
import pytest

from megatron_galvatron.data.errors import DataError
from megatron_galvatron.data.mock_dataset import MockGPTDataset


def test_deterministic_per_seed_and_index_only():
    a = MockGPTDataset(seq_length=32, vocab_size=1000, seed=7, num_samples=100)
    b = MockGPTDataset(seq_length=32, vocab_size=1000, seed=7, num_samples=5000)
    reverse = [b[i] for i in reversed(range(100))][::-1]
    for i in range(100):
        assert np.array_equal(a[i], reverse[i]) and np.array_equal(a[i], a[i])
    c = MockGPTDataset(seq_length=32, vocab_size=1000, seed=8, num_samples=100)
    assert sum(np.array_equal(a[i], c[i]) for i in range(100)) < 5
    assert len({a[i].tobytes() for i in range(100)}) > 95


@pytest.mark.parametrize("vocab_size", [2, 3, 50257])
def test_shape_dtype_range_and_structure(vocab_size):
    ds = MockGPTDataset(seq_length=64, vocab_size=vocab_size, seed=0, num_samples=50)
    assert len(ds) == 50
    for i in range(50):
        s = ds[i]
        assert s.dtype == np.int64 and s.shape == (65,)
        assert s.min() >= 0 and s.max() < vocab_size
        # a progression mod vocab_size: after two tokens every token is predictable
        steps = np.diff(s) % vocab_size
        assert np.all(steps == steps[0]) and steps[0] != 0
    with pytest.raises(IndexError):
        ds[50]


def test_bad_arguments():
    with pytest.raises(DataError):
        MockGPTDataset(seq_length=8, vocab_size=1, seed=0, num_samples=1)
