"""The error the data pipeline raises for bad data files, tokenizers and data flags."""
from megatron_galvatron.errors import UserError


class DataError(UserError):
    """A data file, tokenizer model or data flag is missing, corrupt or inconsistent; one line."""
