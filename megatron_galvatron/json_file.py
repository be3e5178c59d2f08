"""Reading a JSON object from a file and checking its fields, for every format we read (plans,
Galvatron configs, profiles, Hugging Face config.json): each problem is one line naming the
file and the key, raised as the format's own UserError subclass."""
import json
import math
import os
from typing import Any, Callable, Optional, Tuple

from megatron_galvatron.errors import UserError

_MISSING = object()
# The largest profile is a few MB: a bigger file was given by mistake, and read whole it could fill memory.
MAX_BYTES = 1 << 28
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
          dict: "an object"}


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:  # json.loads keeps the last silently: two values for one key is an ambiguous file
            raise ValueError(f"duplicate key {_short(k)}")
        out[k] = v
    return out


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str, what: str, hint: str = "", error: Callable[[str], Exception] = UserError,
              max_bytes: int = MAX_BYTES) -> Tuple[Any, bytes]:
    """The JSON value in file `path` (a `what`, e.g. "plan") and the bytes it was read from;
    `hint` says how to make a good one. Duplicate keys and NaN/Infinity (which JSON does not have) are refused."""
    fix = f": {hint}" if hint else ""
    if not path:
        raise error(f"empty path for the {what} file: give its path")
    if not os.path.exists(path):
        raise error(f"{what} file {path} does not exist{fix}")
    if os.path.isdir(path):
        raise error(f"{what} file {path} is a directory: give the path of the file itself")
    if not os.path.isfile(path):  # a device or a pipe could be read forever
        raise error(f"{what} file {path} is not a regular file{fix}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise error(f"{what} file {path} holds {size >> 20} MiB, too much to be a {what}: check the path{fix}")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {what} file {path} ({e.strerror or e}){fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} file {path} is not UTF-8 text (byte {e.start}){fix}")
    if not text.strip():
        raise error(f"{what} file {path} is empty{fix}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant), raw
    except json.JSONDecodeError as e:
        raise error(f"{what} file {path} is not valid JSON ({e.msg} at line {e.lineno}){fix}")
    except RecursionError:  # the decoder recurses once per nesting level
        raise error(f"{what} file {path} nests too deeply to be a {what}{fix}")
    except ValueError as e:  # a duplicate key, NaN, an integer of more digits than int() accepts
        raise error(f"{what} file {path} is not valid JSON ({str(e).splitlines()[0][:80]}){fix}")


def read_object(path: str, what: str, hint: str = "", error: Callable[[str], Exception] = UserError) -> dict:
    """The JSON object in file `path` (a `what`, e.g. "plan"); `hint` says how to make a good one."""
    d, _ = read_json(path, what, hint, error)
    if not isinstance(d, dict):
        fix = f": {hint}" if hint else ""
        raise error(f"{what} file {path} must hold a JSON object, not a {type(d).__name__}{fix}")
    return d


def check(v: Any, kind: type, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
          error: Callable[[str], Exception] = UserError, lo_open: bool = False) -> Any:
    """`v` if it is of `kind` (int excludes true/false; float takes ints and must be finite) and
    within [lo, hi] ((lo, hi] with lo_open); a float comes back as float."""
    if kind is float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    elif kind is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    else:
        ok = isinstance(v, kind)
    if not ok:
        raise error(f"{name} must be {_KINDS[kind]}, got {_short(v)}")
    if kind in (int, float) and ((lo is not None and (v < lo or (lo_open and v == lo)))
                                 or (hi is not None and v > hi)):
        low = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        high = "" if hi is None else f"<= {hi}"
        raise error(f"{name} must be {' and '.join(x for x in (low, high) if x)}, got {_short(v)}")
    return float(v) if kind is float else v


def field(obj: dict, key: str, kind: type, where: str = "", default: Any = _MISSING,
          error: Callable[[str], Exception] = UserError, **bounds) -> Any:
    """obj[key] checked as by `check`; `default` when the key is absent (else it is required)."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        if default is _MISSING:
            raise error(f"missing key {name!r}")
        return default
    return check(obj[key], kind, f"key {name!r}", error=error, **bounds)
