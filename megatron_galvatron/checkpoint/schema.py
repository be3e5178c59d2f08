"""The one check of meta.json's fields: the type and range of each, file names that cannot leave
the checkpoint directory, and a tensor index that only names listed files. A reader runs it on
what it parsed and a writer on what it is about to write, so that nothing the code writes is
refused and nothing else is trusted."""
import dataclasses
import math
import re
import typing

from megatron_galvatron.checkpoint import tokenizer_files
from megatron_galvatron.checkpoint.format import FORMAT, RNG_RE, SHARD_RE, CheckpointError
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig

MAX_DEPTH = 32  # meta.json nests 5 deep (hf_config a few more); deeper is damage, not data
REQUIRED = ("format", "iteration", "consumed_samples", "model", "plan", "world_size", "optimizer", "tensors",
            "files")
OPTIONAL = ("format_version", "meta_sha256", "lr_schedule", "seed", "saved_at", "source", "hf_config",
            "resharded_from", "tokenizer")
HEX64 = re.compile(r"[0-9a-f]{64}")
TENSOR_KEY = re.compile(r"model/[^/]+|optim/[^/]+/[^/]+")
DTYPES = {"float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
          "float8_e4m3fn", "float8_e5m2"}


class _Bad(Exception):
    """A field and what is wrong with it; check_meta turns it into one CheckpointError line."""


def depth(obj) -> int:
    """How deep obj nests, without recursion (a hostile file may nest thousands deep)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(field: str, v, low: int) -> None:
    if not _is_int(v) or v < low:
        raise _Bad(f"{field} is {v!r}, not an integer >= {low}")


def _number(field: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad(f"{field} is {v!r}, not a finite number")


def _dict(field: str, v) -> dict:
    if not isinstance(v, dict):
        raise _Bad(f"{field} is a {type(v).__name__}, not an object")
    return v


def _model(record) -> None:
    _dict("model", record)
    hints = typing.get_type_hints(GPTConfig)
    for f in dataclasses.fields(GPTConfig):
        if f.name not in record:
            continue
        v, kind = record[f.name], hints[f.name]
        args = typing.get_args(kind)
        if v is None and type(None) in args:
            continue
        base = next((a for a in args if a is not type(None)), kind)
        ok = {int: _is_int, float: lambda x: not isinstance(x, bool) and isinstance(x, (int, float))
              and math.isfinite(x), bool: lambda x: isinstance(x, bool), str: lambda x: isinstance(x, str)}[base](v)
        if not ok:
            raise _Bad(f"model.{f.name} is {v!r}, not a {base.__name__}")
    try:
        GPTConfig(**{f.name: record[f.name] for f in dataclasses.fields(GPTConfig) if f.name in record})
    except UserError as e:
        raise _Bad(f"model does not describe a valid model ({e})")


def _plan(plan, world_size) -> None:
    if world_size is not None:
        _int("world_size", world_size, 1)
    if plan is None:
        return
    from megatron_galvatron.plan import Plan
    try:
        p = Plan.from_dict(_dict("plan", plan))
    except (UserError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise _Bad(f"plan is not a valid plan ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    if p.world_size != world_size:
        raise _Bad(f"world_size {world_size!r} differs from the plan's {p.world_size}")


def _optimizer(opt, tensors: dict) -> None:
    _dict("optimizer", opt)
    if not isinstance(opt.get("has_state"), bool):
        raise _Bad(f"optimizer.has_state is {opt.get('has_state')!r}, not true or false")
    if opt["has_state"] != any(k.startswith("optim/") for k in tensors):
        raise _Bad(f"optimizer.has_state is {opt['has_state']} but the tensor index says otherwise")
    if "type" in opt and not isinstance(opt["type"], str):
        raise _Bad(f"optimizer.type is {opt['type']!r}, not a string")
    for k in ("eps", "weight_decay"):
        if k in opt:
            _number(f"optimizer.{k}", opt[k])
    if "betas" in opt:
        if not isinstance(opt["betas"], list) or len(opt["betas"]) != 2:
            raise _Bad(f"optimizer.betas is {opt['betas']!r}, not a pair of numbers")
        for b in opt["betas"]:
            _number("optimizer.betas", b)


def _files(files) -> None:
    if not _dict("files", files):
        raise _Bad("files is empty: a checkpoint lists every file it holds, with its size and sha256")
    for fname, info in files.items():
        if not (SHARD_RE.fullmatch(fname) or RNG_RE.fullmatch(fname)):
            raise _Bad(f"files names {fname[:80]!r}, which is not a file of a checkpoint directory "
                       f"(r<rank>-<n>.safetensors or rng_r<rank>.json)")
        if not isinstance(info, dict) or set(info) != {"bytes", "sha256"}:
            raise _Bad(f"files[{fname!r}] is {str(info)[:80]}, not {{\"bytes\": ..., \"sha256\": ...}}")
        _int(f"files[{fname!r}].bytes", info["bytes"], 0)
        if not isinstance(info["sha256"], str) or not HEX64.fullmatch(info["sha256"]):
            raise _Bad(f"files[{fname!r}].sha256 is {str(info['sha256'])[:80]!r}, not 64 lowercase hex digits")


def _tensors(tensors, files: dict) -> None:
    if not _dict("tensors", tensors):
        raise _Bad("tensors is empty: a checkpoint holds at least the model's weights")
    if not any(k.startswith("model/") for k in tensors):
        raise _Bad("tensors has no model/ entry: the checkpoint holds no weights")
    for key, info in tensors.items():
        if not TENSOR_KEY.fullmatch(key):
            raise _Bad(f"tensors has the key {key[:80]!r}, not model/<name> or optim/<state>/<name>")
        if not isinstance(info, dict) or set(info) != {"file", "shape", "dtype"}:
            raise _Bad(f"tensors[{key!r}] is {str(info)[:80]}, not {{\"file\", \"shape\", \"dtype\"}}")
        if not isinstance(info["file"], str) or not SHARD_RE.fullmatch(info["file"]) or info["file"] not in files:
            raise _Bad(f"tensors[{key!r}].file {str(info['file'])[:80]!r} is not a safetensors file listed in files")
        if not isinstance(info["shape"], list) or not all(_is_int(n) and n >= 0 for n in info["shape"]):
            raise _Bad(f"tensors[{key!r}].shape is {str(info['shape'])[:80]}, not a list of sizes >= 0")
        if info["dtype"] not in DTYPES:
            raise _Bad(f"tensors[{key!r}].dtype is {str(info['dtype'])[:40]!r}, not one of {sorted(DTYPES)}")


def _fields(meta) -> None:
    _dict("meta.json", meta)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise _Bad(f"lacks {', '.join(missing)}")
    unknown = sorted(set(meta) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise _Bad(f"has unknown field(s) {', '.join(repr(k[:40]) for k in unknown[:3])}")
    if meta["format"] != FORMAT:
        raise _Bad(f"format is {str(meta['format'])[:60]!r}, not {FORMAT!r}")
    _int("iteration", meta["iteration"], 0)
    _int("consumed_samples", meta["consumed_samples"], 0)
    _model(meta["model"])
    _plan(meta["plan"], meta["world_size"])
    _files(meta["files"])
    _tensors(meta["tensors"], meta["files"])
    _optimizer(meta["optimizer"], meta["tensors"])
    if "seed" in meta and not _is_int(meta["seed"]):
        raise _Bad(f"seed is {meta['seed']!r}, not an integer")
    if "saved_at" in meta and not isinstance(meta["saved_at"], str):
        raise _Bad(f"saved_at is {meta['saved_at']!r}, not a string")
    for k in ("lr_schedule", "source", "hf_config", "resharded_from"):
        if k in meta:
            _dict(k, meta[k])
    if "tokenizer" in meta and tokenizer_files.check(meta["tokenizer"]):
        raise _Bad(f"tokenizer {tokenizer_files.check(meta['tokenizer'])}")
    for k, v in meta.get("lr_schedule", {}).items():
        if not (v is None or isinstance(v, str) or (isinstance(v, (int, float)) and math.isfinite(v))):
            raise _Bad(f"lr_schedule.{k} is {str(v)[:40]}, not a number or a string")


def check_meta(meta, where: str) -> None:
    """Raise one CheckpointError line naming `where` and the first field that is wrong."""
    if depth(meta) > MAX_DEPTH:
        raise CheckpointError(f"{where} nests deeper than {MAX_DEPTH} levels: the checkpoint is corrupt; "
                              f"load an older one")
    try:
        _fields(meta)
    except _Bad as e:
        raise CheckpointError(f"{where}: {e}: the checkpoint is corrupt; load an older one")
