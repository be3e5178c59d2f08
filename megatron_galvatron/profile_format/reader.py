"""Reading and validating hardware.json and model.json: every problem is a ProfileError that
names the file and the key, in one line. A file of an older version is upgraded as it is read."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional, Tuple

from megatron_galvatron.json_file import check, read_object
from megatron_galvatron.model.config import (ARCHITECTURE_FIELDS, ARCHITECTURE_VALUES, FAMILIES, SHAPE_FIELDS,
                                             architecture)
from megatron_galvatron.model.config import flag as model_flag
from megatron_galvatron.plan import FP8_RECIPES
from megatron_galvatron.profile_format.schema import (
    COLLECTIVES,
    GROUP_KEY,
    HARDWARE_FILE,
    HARDWARE_FORMAT,
    HARDWARE_VERSION,
    MODEL_FILE,
    MODEL_FORMAT,
    MODEL_KEYS,
    MODEL_VERSION,
    REQUIRED_COLLECTIVES,
    TP_KEY,
    CommFit,
    CommSegment,
    Fp8Tables,
    HardwareProfile,
    ModelProfile,
    ProfileError,
    TimeFit,
    tp_key,
)
from megatron_galvatron.profile_format.seq_fit import parse_sequence


# Above any time, size, rate or count a profile measures: a larger number is corruption, not a measurement.
MAX_VALUE = 1e18


class _Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, msg: str) -> ProfileError:
        return ProfileError(f"{self.path}: {msg} (schema: docs/profile_format.md)")

    def get(self, obj: Dict, key: str, where: str, kind=None) -> Any:
        name = f"{where}.{key}" if where else key
        if not isinstance(obj, dict) or key not in obj:
            raise self.fail(f"missing key '{name}'")
        v = obj[key]
        if kind is dict and not isinstance(v, dict):
            raise self.fail(f"key '{name}' must be an object, got {type(v).__name__}")
        if kind is list and not isinstance(v, list):
            raise self.fail(f"key '{name}' must be a list, got {type(v).__name__}")
        if kind is str and not isinstance(v, str):
            raise self.fail(f"key '{name}' must be a string, got {v!r}")
        return v

    def number(self, obj: Dict, key: str, where: str, minimum: float = 0.0, strict: bool = False) -> float:
        name = f"{where}.{key}" if where else key
        return check(self.get(obj, key, where), float, f"key '{name}'", minimum, MAX_VALUE, self.fail, strict)

    def value(self, v: Any, name: str) -> float:
        return check(v, float, f"key '{name}'", 0.0, MAX_VALUE, self.fail)

    def integer(self, obj: Dict, key: str, where: str, minimum: int = 1) -> int:
        return check(self.get(obj, key, where), int, f"key '{where}.{key}'", minimum, int(MAX_VALUE), self.fail)

    def points(self, obj: Dict, where: str, width: int) -> None:
        pts = self.get(obj, "points", where, list)
        for p in pts:
            if not isinstance(p, list) or len(p) != width or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and abs(x) <= MAX_VALUE for x in p):
                raise self.fail(f"'{where}.points' entries must be lists of {width} numbers, got {p!r}")

    def comm_fit(self, obj: Dict, where: str) -> CommFit:
        if not isinstance(obj, dict):
            raise self.fail(f"key '{where}' must be an object with latency_s, bandwidth_GBps, points")
        fit = CommFit(self.number(obj, "latency_s", where), self.number(obj, "bandwidth_GBps", where, strict=True),
                      self.segments(obj, where))
        self.points(obj, where, 2)
        return fit

    def segments(self, obj: Dict, where: str) -> Tuple[CommSegment, ...]:
        if "segments" not in obj:
            return ()
        raw = self.get(obj, "segments", where, list)
        if not raw:
            raise self.fail(f"key '{where}.segments' must hold at least one segment (or be left out)")
        out, below = [], 0.0
        for k, seg in enumerate(raw):
            name = f"{where}.segments[{k}]"
            if not isinstance(seg, dict):
                raise self.fail(f"key '{name}' must be an object with max_bytes, latency_s, bandwidth_GBps")
            top = self.get(seg, "max_bytes", name)
            last = k + 1 == len(raw)
            if last and top is not None:
                raise self.fail(f"key '{name}.max_bytes' must be null: the last segment has no upper end")
            if not last:
                top = self.number(seg, "max_bytes", name, strict=True)
                if top <= below:
                    raise self.fail(f"key '{name}.max_bytes' must exceed the previous segment's, got {top!r}")
                below = top
            out.append(CommSegment(top, self.number(seg, "latency_s", name),
                                   self.number(seg, "bandwidth_GBps", name, strict=True)))
        return tuple(out)

    def time_fit(self, obj: Dict, where: str) -> TimeFit:
        if not isinstance(obj, dict):
            raise self.fail(f"key '{where}' must be an object with intercept_s, per_token_s, points")
        fit = TimeFit(self.number(obj, "intercept_s", where), self.number(obj, "per_token_s", where))
        self.points(obj, where, 3)
        return fit

    def tp_table(self, obj: Dict, where: str, allow_sp: bool = True) -> Dict[Tuple[int, bool], Any]:
        out = {}
        for key, v in obj.items():
            m = TP_KEY.match(key)
            if not m or (m.group(2) and not allow_sp):
                form = "tp<k> or tp<k>_sp" if allow_sp else "tp<k>"
                raise self.fail(f"key '{where}.{key}' is not of the form {form}")
            out[(int(m.group(1)), bool(m.group(2)))] = v
        if (1, False) not in out:
            raise self.fail(f"missing key '{where}.tp1'")
        return out


def read_json(path: str, what: str, hint: str) -> Dict:
    return read_object(path, f"{what} profile", hint, ProfileError)


def _model_v1(d: Dict) -> Dict:
    """Version 1 named the tables measured on bf16 weights 'sharded'."""
    for part in ("layer", "vocab"):
        if isinstance(d.get(part), dict) and "sharded" in d[part]:
            d[part] = {("bf16" if k == "sharded" else k): v for k, v in d[part].items()}
    return d


def _model_v2(d: Dict) -> Dict:
    """Version 3 added the optional float8 tables: a version 2 file simply has none."""
    return d


def _model_v3(d: Dict) -> Dict:
    """Version 4 added the optional fits in sequence length: a version 3 file has none."""
    return d


# (format, version read) -> the step to the next version
_UPGRADES = {(MODEL_FORMAT, 1): _model_v1, (MODEL_FORMAT, 2): _model_v2, (MODEL_FORMAT, 3): _model_v3}


def upgrade(r: _Reader, d: Dict, name: str, version: int) -> Dict:
    """A copy of profile `d` in the current version of format `name` (version `version`); the
    file on disk is left as it was."""
    got = r.get(d, "schema", "")
    expected = f"{name}/{version}"
    head, _, tail = str(got).rpartition("/")
    if head != name or not tail.isdigit() or not 1 <= int(tail) <= version:
        newer = head == name and tail.isdigit() and int(tail) > version
        hint = ": it was written by a newer megatron_galvatron" if newer else ""
        raise r.fail(f"schema is {got!r}, expected {expected!r}{hint}")
    d = dict(d)
    for v in range(int(tail), version):
        d = _UPGRADES[(name, v)](d)
    d["schema"] = expected
    return d


# -------------------------------------------------------------------- hardware.json

def parse_hardware(d: Dict, path: str = HARDWARE_FILE) -> HardwareProfile:
    r = _Reader(path)
    d = upgrade(r, d, HARDWARE_FORMAT, HARDWARE_VERSION)
    hw = r.get(d, "hardware", "", dict)
    gpu_name = r.get(hw, "gpu_name", "hardware", str)
    num_gpus = r.integer(hw, "num_gpus", "hardware")
    num_nodes = r.integer(hw, "num_nodes", "hardware")
    gpus_per_node = r.integer(hw, "gpus_per_node", "hardware")
    for k in ("torch", "nccl"):
        r.get(hw, k, "hardware")
    if num_nodes * gpus_per_node != num_gpus:
        raise r.fail(f"hardware.num_nodes x hardware.gpus_per_node = {num_nodes * gpus_per_node} "
                     f"but hardware.num_gpus = {num_gpus}")
    r.get(d, "command", "", str)
    colls = r.get(d, "collectives", "", dict)
    unknown = sorted(set(colls) - set(COLLECTIVES))
    if unknown:
        raise r.fail(f"unknown collective(s) {unknown} under 'collectives' (known: {', '.join(COLLECTIVES)})")
    collectives: Dict[str, Dict[Tuple[int, str], CommFit]] = {}
    for op in REQUIRED_COLLECTIVES:
        r.get(colls, op, "collectives", dict)
    for op, groups in colls.items():
        if not isinstance(groups, dict):
            raise r.fail(f"key 'collectives.{op}' must be an object keyed by '<group size>_<consec|strided>'")
        table = {}
        for key, fit in groups.items():
            m = GROUP_KEY.match(key)
            if not m:
                raise r.fail(f"key 'collectives.{op}.{key}' is not of the form '<group size>_<consec|strided>'")
            table[(int(m.group(1)), m.group(2))] = r.comm_fit(fit, f"collectives.{op}.{key}")
        if op in REQUIRED_COLLECTIVES and not table:
            raise r.fail(f"'collectives.{op}' has no measured group")
        collectives[op] = table
    p2p_raw = r.get(d, "p2p", "", dict)
    p2p = {}
    for key, fit in p2p_raw.items():
        if not key.isdigit() or int(key) < 2:
            raise r.fail(f"key 'p2p.{key}' must be a pipeline degree >= 2")
        p2p[int(key)] = r.comm_fit(fit, f"p2p.{key}")
    ov = r.get(d, "overlap", "", dict)
    cs = r.number(ov, "compute_slowdown", "overlap", 1.0)
    ms = r.number(ov, "comm_slowdown", "overlap", 1.0)
    by_op = {}
    for op, pair in r.get(ov, "by_collective", "overlap", dict).items() if "by_collective" in ov else ():
        if op not in collectives or not isinstance(pair, dict):
            raise r.fail(f"key 'overlap.by_collective.{op}' must name a profiled collective and hold "
                         f"compute_slowdown and comm_slowdown")
        by_op[op] = (r.number(pair, "compute_slowdown", f"overlap.by_collective.{op}", 1.0),
                     r.number(pair, "comm_slowdown", f"overlap.by_collective.{op}", 1.0))
    memory_gb = r.number(hw, "memory_gb", "hardware", 0.0) if "memory_gb" in hw else None
    return HardwareProfile(path, gpu_name, num_gpus, num_nodes, gpus_per_node, collectives, p2p, cs, ms,
                           memory_gb or None, by_op)


# -------------------------------------------------------------------- model.json

def _duty_curve(r, duty, slow: float) -> Tuple[Tuple[float, float], ...]:
    """'sustained.duty': [[duty, slowdown], ...] as the cost model reads it: sorted by duty, each
    slowdown held within [1, slow] and at least the one before (a GPU busy less of the time never
    runs slower; what is left of noise must not make the curve fall)."""
    if not isinstance(duty, list):
        raise r.fail("key 'sustained.duty' must be a list of [duty, slowdown] pairs")
    pts = []
    for p in duty:
        if (not isinstance(p, list) or len(p) != 2 or not all(isinstance(v, (int, float)) for v in p)
                or not 0 < p[0] < 1 or p[1] <= 0):
            raise r.fail(f"key 'sustained.duty' must hold [duty in (0, 1), slowdown > 0] pairs, got {p!r}")
        pts.append((float(p[0]), float(p[1])))
    out, low = [], 1.0
    for u, s in sorted(pts):
        low = min(max(s, low), slow)
        out.append((u, low))
    return tuple(out)


def parse_model(d: Dict, path: str = MODEL_FILE, bf16_only: bool = True) -> ModelProfile:
    """`bf16_only`: refuse other dtypes, which the cost model does not price (the writer checks an
    fp32 profile for everything else)."""
    r = _Reader(path)
    d = upgrade(r, d, MODEL_FORMAT, MODEL_VERSION)
    model = r.get(d, "model", "", dict)
    for k in MODEL_KEYS:
        r.get(model, k, "model")
    if not all(k in model for k in ARCHITECTURE_FIELDS):
        r.get(model, "family", "model")
    if model.get("family") is not None and model["family"] not in FAMILIES:
        raise r.fail(f"key 'model.family' is {model['family']!r}: use one of {', '.join(FAMILIES)} or null")
    model = {**architecture(model), **model}  # only absent fields come from the family
    for k, allowed in ARCHITECTURE_VALUES.items():
        if model[k] not in allowed or type(model[k]) is not type(allowed[0]):
            raise r.fail(f"key 'model.{k}' is {model[k]!r}: use one of {', '.join(map(str, allowed))}")
    dtype = r.get(d, "dtype", "", str)
    if bf16_only and dtype != "bf16":
        raise r.fail(f"dtype is {dtype!r}; the cost model prices bf16 compute with fp32 master weights only")
    r.get(d, "hardware", "", dict)
    r.get(d, "command", "", str)

    layer = r.get(d, "layer", "", dict)
    times = r.tp_table(r.get(layer, "time", "layer", dict), "layer.time")
    layer_time = {}
    for (tp, sp), v in times.items():
        where = f"layer.time.{tp_key(tp, sp)}"
        if not isinstance(v, dict):
            raise r.fail(f"key '{where}' must be an object with fwd and bwd")
        layer_time[(tp, sp)] = (r.time_fit(r.get(v, "fwd", where), f"{where}.fwd"),
                                r.time_fit(r.get(v, "bwd", where), f"{where}.bwd"))
    mem = r.get(layer, "memory", "layer", dict)
    param_count = r.integer(mem, "param_count", "layer.memory")
    tables = {}
    for key in ("activation_bytes_per_token", "checkpoint_bytes_per_token"):
        raw = r.tp_table(r.get(mem, key, "layer.memory", dict), f"layer.memory.{key}")
        tables[key] = {k: r.value(v, f"layer.memory.{key}.{tp_key(*k)}") for k, v in raw.items()}

    vocab = r.get(d, "vocab", "", dict)
    vocab_params = r.integer(vocab, "param_count", "vocab")
    vtimes = r.tp_table(r.get(vocab, "time", "vocab", dict), "vocab.time", allow_sp=False)
    vocab_time = {}
    for (tp, _), v in vtimes.items():
        where = f"vocab.time.tp{tp}"
        if not isinstance(v, dict):
            raise r.fail(f"key '{where}' must be an object with fwd and bwd")
        vocab_time[tp] = (r.time_fit(r.get(v, "fwd", where), f"{where}.fwd"),
                          r.time_fit(r.get(v, "bwd", where), f"{where}.bwd"))
    vact_raw = r.tp_table(r.get(vocab, "activation_bytes_per_token", "vocab", dict),
                          "vocab.activation_bytes_per_token", allow_sp=False)
    vocab_act = {tp: r.value(v, f"vocab.activation_bytes_per_token.tp{tp}") for (tp, _), v in vact_raw.items()}

    opt = r.get(d, "optimizer", "", dict)
    step = r.number(opt, "step_s_per_param", "optimizer")
    alloc = r.get(d, "allocator", "", dict)
    ratio = r.number(alloc, "reserved_over_allocated", "allocator", 1.0)
    fixed = r.number(alloc, "fixed_overhead_bytes", "allocator")
    prof = ModelProfile(path, dict(model), layer_time, param_count, tables["activation_bytes_per_token"],
                        tables["checkpoint_bytes_per_token"], vocab_params, vocab_time, vocab_act, step, ratio, fixed)

    # Optional keys: absent is fine, present must be well formed.
    prof.recompute_fraction = _optional_numbers(r, layer, "recompute_fraction", "layer")
    prof.layer_activation_constant = _optional_numbers(r, mem, "activation_constant_bytes", "layer.memory")
    prof.vocab_activation_constant = _tp_only(_optional_numbers(r, vocab, "activation_constant_bytes", "vocab",
                                                                allow_sp=False))
    prof.embedding_time = _tp_only(_optional_times(r, vocab, "embedding_time", "vocab", allow_sp=False))
    bf16 = layer.get("bf16")
    if bf16 is not None:
        if not isinstance(bf16, dict):
            raise r.fail("key 'layer.bf16' must be an object")
        prof.bf16_layer_time = _optional_times(r, bf16, "time", "layer.bf16")
        prof.bf16_recompute_fraction = _optional_numbers(r, bf16, "recompute_fraction", "layer.bf16")
        prof.bf16_activation_bytes_per_token = _optional_numbers(r, bf16, "activation_bytes_per_token",
                                                                 "layer.bf16")
        prof.bf16_checkpoint_bytes_per_token = _optional_numbers(r, bf16, "checkpoint_bytes_per_token",
                                                                 "layer.bf16")
    prof.fp8 = _fp8_tables(r, layer.get("fp8", {}))
    vbf16 = vocab.get("bf16")
    if vbf16 is not None:
        if not isinstance(vbf16, dict):
            raise r.fail("key 'vocab.bf16' must be an object")
        prof.bf16_vocab_time = _tp_only(_optional_times(r, vbf16, "time", "vocab.bf16", allow_sp=False))
        prof.bf16_vocab_activation_bytes_per_token = _tp_only(
            _optional_numbers(r, vbf16, "activation_bytes_per_token", "vocab.bf16", allow_sp=False))
    prof.seq_lengths, prof.seq_activation, prof.seq_fits = parse_sequence(r, d)  # before the slowdown scales them
    sustained = d.get("sustained")
    if sustained is not None:
        if not isinstance(sustained, dict):
            raise r.fail("key 'sustained' must be an object")
        slow = r.number(sustained, "slowdown", "sustained", 1.0)
        if slow <= 0:
            raise r.fail(f"key 'sustained.slowdown' must be positive, got {slow}")
        prof.apply_sustained_slowdown(slow, _fp8_slowdowns(r, sustained.get("fp8", {})))
        prof.sustained_curve = _duty_curve(r, sustained.get("duty", []), slow)
    compiled = d.get("compiled", False)
    if not isinstance(compiled, bool):
        raise r.fail(f"key 'compiled' must be true or false, got {compiled!r}")
    prof.compiled = compiled
    return prof


def _fp8_slowdowns(r: _Reader, raw: Any) -> Dict[str, float]:
    """'sustained.fp8': {recipe: {"slowdown": x, ...}}, the chain of float8 layers of each recipe."""
    if not isinstance(raw, dict):
        raise r.fail("key 'sustained.fp8' must be an object of recipes")
    out = {}
    for recipe, entry in raw.items():
        if recipe not in FP8_RECIPES or not isinstance(entry, dict):
            raise r.fail(f"key 'sustained.fp8.{recipe}' must be one of {list(FP8_RECIPES)}, each an object")
        slow = r.number(entry, "slowdown", f"sustained.fp8.{recipe}", 1.0)
        if slow <= 0:
            raise r.fail(f"key 'sustained.fp8.{recipe}.slowdown' must be positive, got {slow}")
        out[recipe] = slow
    return out


def _fp8_tables(r: _Reader, raw: Any) -> Dict[str, Fp8Tables]:
    if not isinstance(raw, dict):
        raise r.fail("key 'layer.fp8' must be an object keyed by fp8 recipe")
    out = {}
    for recipe, t in raw.items():
        where = f"layer.fp8.{recipe}"
        if recipe not in FP8_RECIPES:
            raise r.fail(f"key '{where}' is not an fp8 recipe (known: {', '.join(FP8_RECIPES)})")
        if not isinstance(t, dict):
            raise r.fail(f"key '{where}' must be an object")
        r.get(t, "time", where, dict)
        time = _optional_times(r, t, "time", where)
        tables = {k: _optional_numbers(r, t, k, where) for k in
                  ("activation_bytes_per_token", "checkpoint_bytes_per_token", "activation_constant_bytes",
                   "recompute_fraction")}
        for k in ("activation_bytes_per_token", "checkpoint_bytes_per_token"):
            missing = sorted(set(time) - set(tables[k]))
            if missing:
                raise r.fail(f"missing key '{where}.{k}.{tp_key(*missing[0])}'")
        out[recipe] = Fp8Tables(time, tables["activation_bytes_per_token"], tables["checkpoint_bytes_per_token"],
                                tables["activation_constant_bytes"], tables["recompute_fraction"])
    return out


def _tp_only(table: Dict[Tuple[int, bool], Any]) -> Dict[int, Any]:
    return {tp: v for (tp, _), v in table.items()}


def _optional_numbers(r: _Reader, obj: Dict, key: str, where: str, allow_sp: bool = True) -> Dict:
    if key not in obj:
        return {}
    raw = r.tp_table(r.get(obj, key, where, dict), f"{where}.{key}", allow_sp)
    return {k: r.value(v, f"{where}.{key}.{tp_key(*k)}") for k, v in raw.items()}


def _optional_times(r: _Reader, obj: Dict, key: str, where: str, allow_sp: bool = True) -> Dict:
    if key not in obj:
        return {}
    raw = r.tp_table(r.get(obj, key, where, dict), f"{where}.{key}", allow_sp)
    out = {}
    for k, v in raw.items():
        name = f"{where}.{key}.{tp_key(*k)}"
        if not isinstance(v, dict):
            raise r.fail(f"key '{name}' must be an object with fwd and bwd")
        out[k] = (r.time_fit(r.get(v, "fwd", name), f"{name}.fwd"), r.time_fit(r.get(v, "bwd", name), f"{name}.bwd"))
    return out


# -------------------------------------------------------------------- directory

def load_profiles(profile_dir: str, seq_length: Optional[int] = None) -> Tuple[HardwareProfile, ModelProfile]:
    """Both profiles of `profile_dir`; with `seq_length`, the model profile at that length from its
    sequence fits where it has them (ModelProfile.for_seq_length)."""
    if not os.path.isdir(profile_dir):
        raise ProfileError(f"profile dir {profile_dir} does not exist: run tools/profile_comm.py and "
                           f"tools/profile_model.py (or python -m search.synthetic) to create it")
    hw_path = os.path.join(profile_dir, HARDWARE_FILE)
    model_path = os.path.join(profile_dir, MODEL_FILE)
    hw = parse_hardware(read_json(hw_path, "hardware", "run tools/profile_comm.py to measure the cluster"),
                        hw_path)
    model = parse_model(read_json(model_path, "model", "run tools/profile_model.py to measure the model"),
                        model_path)
    return hw, (model if seq_length is None else model.for_seq_length(seq_length)[0])


def check_model_matches(profile: ModelProfile, config: Dict[str, Any]) -> None:
    """The profile must describe the model given by the flags, key by key."""
    config = {**config, **architecture(config)}
    for k in SHAPE_FIELDS:
        want, got = config[k], profile.model[k]
        if want != got:
            flag = model_flag(k)
            how = ("profile this model (tools/profile_model.py; --seq-lengths with two or more lengths lets the "
                   "search take others from the fits)" if k == "seq_length" else
                   "profile this model (tools/profile_model.py)")
            raise ProfileError(f"{profile.path}: model profile was measured with {k}={got!r} but {flag} is "
                               f"{want!r}: {how} or fix the flag")


