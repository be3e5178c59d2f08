"""The error the data pipeline raises for bad data files, tokenizers and data flags."""
from megatron_galvatron.errors import UserError


class DataError(UserError):
    """A data file, tokenizer model or data flag is missing, corrupt or inconsistent; one line."""


def sample_index(i, num_samples: int) -> int:
    """i as a sample number of a dataset of num_samples, negative counting from the end (as a list)."""
    i = int(i)
    if not -num_samples <= i < num_samples:
        raise IndexError(f"sample {i} out of range for {num_samples} samples")
    return i % num_samples
