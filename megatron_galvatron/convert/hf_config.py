"""Fields of a Hugging Face config.json, each checked by type and range: one description of a bad
field for every model family's converter."""
from megatron_galvatron.errors import UserError
from megatron_galvatron.json_file import field


def config_error(msg: str) -> UserError:
    return UserError(f"{msg}: the folder's config is incomplete or corrupt")


def positive_size(c: dict, key: str, default=None) -> int:
    """A positive integer; `default` also stands for an explicit null (as transformers writes n_inner)."""
    if default is not None and c.get(key) is None:
        return default
    return field(c, key, int, error=config_error, lo=1)


def real(c: dict, key: str, default: float) -> float:
    return field(c, key, float, default=default, error=config_error)
