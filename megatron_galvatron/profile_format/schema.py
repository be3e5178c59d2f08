"""What the two profile files hold once read: the keys, the version of each file's format, and
the tables as the cost model looks them up (docs/profile_format.md)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, NamedTuple, Optional, Tuple

from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import ARCHITECTURE_FIELDS, SHAPE_FIELDS

HARDWARE_FILE = "hardware.json"
MODEL_FILE = "model.json"
HARDWARE_FORMAT = "megatron_galvatron.hardware_profile"
MODEL_FORMAT = "megatron_galvatron.model_profile"
HARDWARE_VERSION = 1
# 2: the tables measured on bf16 weights without autocast are 'layer.bf16' and 'vocab.bf16'
# (version 1 called them 'sharded' although replicated units run that way too)
# 3: optional 'layer.fp8.<recipe>' tables of the layer with float8 linears (older files have none)
# 4: optional 'sequence' and the layer's fits in sequence length ('seq_fit', 'activation_seq_fit')
MODEL_VERSION = 4
HARDWARE_SCHEMA = f"{HARDWARE_FORMAT}/{HARDWARE_VERSION}"
MODEL_SCHEMA = f"{MODEL_FORMAT}/{MODEL_VERSION}"

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
REQUIRED_COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")
# Keys a profile's model must hold; the architecture fields, absent from profiles older than
# them, are read from the family such a profile names instead.
MODEL_KEYS = tuple(k for k in SHAPE_FIELDS if k not in ARCHITECTURE_FIELDS)
GROUP_KEY = re.compile(r"^([1-9][0-9]*)_(consec|strided)$")
TP_KEY = re.compile(r"^tp([1-9][0-9]*)(_sp)?$")


class ProfileError(UserError):
    """A profile file is missing, malformed or does not match the model being searched."""


def group_key(size: int, layout: str) -> str:
    return f"{size}_{layout}"


def tp_key(tp: int, sp: bool = False) -> str:
    return f"tp{tp}{'_sp' if sp else ''}"


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' bus bandwidth factor: bytes each link carries per byte of the full buffer, which
    is how the file's bandwidths are defined."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n if op == "all_reduce" else (n - 1) / n


@dataclass(frozen=True)
class CommSegment:
    """The line that prices sizes up to max_bytes (None: no upper end), as CommFit defines a line."""

    max_bytes: Optional[float]
    latency_s: float
    bandwidth_GBps: float


@dataclass(frozen=True)
class CommFit:
    """t = latency_s + bytes / (bandwidth_GBps * 1e9), bytes and bandwidth as the schema defines them.

    With `segments` (optional in the file) the line is that of the segment the size falls in;
    without, the one overall line, exactly as profiles from before segments were priced."""

    latency_s: float
    bandwidth_GBps: float
    segments: Tuple[CommSegment, ...] = ()

    def line(self, nbytes: float) -> Tuple[float, float]:
        """(latency_s, bandwidth_GBps) for a message of `nbytes`; past either end of the measured
        sizes the nearest segment's line."""
        for seg in self.segments:
            if seg.max_bytes is None or nbytes <= seg.max_bytes:
                return seg.latency_s, seg.bandwidth_GBps
        return self.latency_s, self.bandwidth_GBps


@dataclass(frozen=True)
class TimeFit:
    """t = intercept_s + per_token_s * tokens, tokens = micro-batch samples on the rank x sequence length."""

    intercept_s: float
    per_token_s: float

    def __call__(self, tokens: float) -> float:
        return self.intercept_s + self.per_token_s * tokens

    def scaled(self, factor: float) -> "TimeFit":
        return TimeFit(self.intercept_s, self.per_token_s * factor)

    def slowed(self, factor: float) -> "TimeFit":
        """Every second longer by ``factor`` (a lower clock)."""
        return TimeFit(self.intercept_s * factor, self.per_token_s * factor)


@dataclass
class HardwareProfile:
    path: str
    gpu_name: str
    num_gpus: int
    num_nodes: int
    gpus_per_node: int
    collectives: Dict[str, Dict[Tuple[int, str], CommFit]]
    p2p: Dict[int, CommFit]
    compute_slowdown: float
    comm_slowdown: float
    memory_gb: Optional[float] = None  # one GPU's memory (GiB), where the profile recorded it
    # (compute_slowdown, comm_slowdown) measured per collective ('overlap.by_collective'); a
    # collective without its own pair uses the two above
    overlap_by_op: Dict[str, Tuple[float, float]] = field(default_factory=dict)


@dataclass
class ModelProfile:
    path: str
    model: Dict[str, Any]
    layer_time: Dict[Tuple[int, bool], Tuple[TimeFit, TimeFit]]
    layer_param_count: int
    activation_bytes_per_token: Dict[Tuple[int, bool], float]
    checkpoint_bytes_per_token: Dict[Tuple[int, bool], float]
    vocab_param_count: int
    vocab_time: Dict[int, Tuple[TimeFit, TimeFit]]
    vocab_activation_bytes_per_token: Dict[int, float]
    step_s_per_param: float
    reserved_over_allocated: float
    fixed_overhead_bytes: float
    # Optional tables (absent from older profiles; the cost model then derives them, see
    # search/cost_model.py). "constant": bytes saved per micro-batch whatever its size, i.e. the
    # bf16 weight copies autocast keeps for backward. "bf16": the same layer or LM head on bf16
    # weights without autocast, as the runtime computes every unit.
    layer_activation_constant: Dict[Tuple[int, bool], float] = field(default_factory=dict)
    vocab_activation_constant: Dict[int, float] = field(default_factory=dict)
    bf16_layer_time: Dict[Tuple[int, bool], Tuple[TimeFit, TimeFit]] = field(default_factory=dict)
    bf16_activation_bytes_per_token: Dict[Tuple[int, bool], float] = field(default_factory=dict)
    bf16_checkpoint_bytes_per_token: Dict[Tuple[int, bool], float] = field(default_factory=dict)
    bf16_vocab_time: Dict[int, Tuple[TimeFit, TimeFit]] = field(default_factory=dict)
    bf16_vocab_activation_bytes_per_token: Dict[int, float] = field(default_factory=dict)
    embedding_time: Dict[int, Tuple[TimeFit, TimeFit]] = field(default_factory=dict)
    # (checkpointed backward - backward) / forward as measured, per layout key; absent from older
    # profiles, where the cost model estimates it from multiply-adds
    recompute_fraction: Dict[Tuple[int, bool], float] = field(default_factory=dict)
    bf16_recompute_fraction: Dict[Tuple[int, bool], float] = field(default_factory=dict)
    # 'layer.fp8.<recipe>': the bf16 layer with float8 linears, per recipe (plan.FP8_RECIPES)
    fp8: Dict[str, "Fp8Tables"] = field(default_factory=dict)

    # Degrees the profiler did not measure are scaled from the largest measured degree below them:
    # time per token and memory per token both shrink by that ratio (the sharded part dominates).
    sustained_slowdown: float = 1.0
    # (duty, slowdown) measured with the GPU idle part of the time ('sustained.duty'), duty in
    # (0, 1), non-decreasing and within [1, sustained_slowdown]; empty: the cost model's line
    sustained_curve: Tuple[Tuple[float, float], ...] = ()
    compiled: bool = False  # the layer tables time torch.compile'd layers (plans then say "compile")
    # 'sequence': the lengths the layer's fits in sequence length cover (empty: no fits), whether
    # the activation fit found an s^2 term, and the fits per table set (profile_format/seq_fit.py)
    seq_lengths: Tuple[int, ...] = ()
    seq_activation: str = ""
    seq_fits: Dict[str, Any] = field(default_factory=dict)

    def for_seq_length(self, seq: int) -> Tuple["ModelProfile", Optional[str]]:
        """The profile at sequence length `seq` from its fits, and one line saying so; without fits
        the profile itself and None (check_model_matches then wants the profiled length)."""
        from megatron_galvatron.profile_format import seq_fit
        if not self.seq_fits:
            return self, None
        return seq_fit.at_seq_length(self, seq), seq_fit.describe(self, seq)

    def apply_sustained_slowdown(self, factor: float, fp8: Optional[Dict[str, float]] = None) -> None:
        """Layers run ``factor`` times slower inside a long step than in the profiler's short
        timings (model.json 'sustained'): every compute table is slowed alike, except the float8
        tables of a recipe whose own chain was measured ('sustained.fp8.<recipe>'), slowed by that."""
        self.sustained_slowdown = factor
        fp8 = fp8 or {}
        tables = [(t, factor) for t in (self.layer_time, self.vocab_time, self.bf16_layer_time, self.bf16_vocab_time,
                                        self.embedding_time)]
        tables += [(t.time, fp8.get(recipe, factor)) for recipe, t in self.fp8.items()]
        for table, slow in tables:
            for k, (f, b) in list(table.items()):
                table[k] = (f.slowed(slow), b.slowed(slow))
        for name, t in list(self.seq_fits.items()):
            self.seq_fits[name] = t.slowed(fp8.get(name[4:], factor) if name.startswith("fp8.") else factor)

    def _nearest(self, table: Dict, tp: int, sp: bool) -> Tuple[Any, float]:
        if (tp, sp) in table:
            return table[(tp, sp)], 1.0
        for want_sp in ((sp, False) if sp else (False,)):
            below = [k for (k, s) in table if s == want_sp and k <= tp]
            if below:
                k = max(below)
                return table[(k, want_sp)], k / tp
        raise AssertionError("validated profiles always hold tp1")

    @staticmethod
    def _by_tp(table: Dict[int, Any]) -> Dict[Tuple[int, bool], Any]:
        return {(k, False): v for k, v in table.items()}

    def layer_fits(self, tp: int, sp: bool) -> Tuple[TimeFit, TimeFit]:
        return _scaled_fits(self._nearest(self.layer_time, tp, sp))

    def activation_per_token(self, tp: int, sp: bool) -> float:
        v, f = self._nearest(self.activation_bytes_per_token, tp, sp)
        return v * f

    def checkpoint_per_token(self, tp: int, sp: bool) -> float:
        v, f = self._nearest(self.checkpoint_bytes_per_token, tp, sp)
        return v * f

    def vocab_fits(self, tp: int) -> Tuple[TimeFit, TimeFit]:
        return _scaled_fits(self._nearest(self._by_tp(self.vocab_time), tp, False))

    def vocab_activation_per_token(self, tp: int) -> float:
        v, f = self._nearest(self._by_tp(self.vocab_activation_bytes_per_token), tp, False)
        return v * f

    # Optional tables: None when the profile does not have them.
    def _optional(self, table: Dict, tp: int, sp: bool) -> Optional[Tuple[Any, float]]:
        if not table or not any(k == 1 for k, _ in table):
            return None
        return self._nearest(table, tp, sp)

    def _optional_bytes(self, table: Dict, tp: int, sp: bool) -> Optional[float]:
        hit = self._optional(table, tp, sp)
        return None if hit is None else hit[0] * hit[1]

    def _optional_fits(self, table: Dict, tp: int, sp: bool) -> Optional[Tuple[TimeFit, TimeFit]]:
        hit = self._optional(table, tp, sp)
        return None if hit is None else _scaled_fits(hit)

    def layer_constant(self, tp: int, sp: bool) -> Optional[float]:
        return self._optional_bytes(self.layer_activation_constant, tp, sp)

    def vocab_constant(self, tp: int) -> Optional[float]:
        return self._optional_bytes(self._by_tp(self.vocab_activation_constant), tp, False)

    def bf16_layer_fits(self, tp: int, sp: bool) -> Optional[Tuple[TimeFit, TimeFit]]:
        return self._optional_fits(self.bf16_layer_time, tp, sp)

    def bf16_activation_per_token(self, tp: int, sp: bool) -> Optional[float]:
        return self._optional_bytes(self.bf16_activation_bytes_per_token, tp, sp)

    def bf16_checkpoint_per_token(self, tp: int, sp: bool) -> Optional[float]:
        return self._optional_bytes(self.bf16_checkpoint_bytes_per_token, tp, sp)

    def measured_recompute_fraction(self, tp: int, sp: bool, bf16: bool) -> Optional[float]:
        table = (self.bf16_recompute_fraction if bf16 else None) or self.recompute_fraction
        hit = self._optional(table, tp, sp)
        return None if hit is None else hit[0]

    def bf16_vocab_fits(self, tp: int) -> Optional[Tuple[TimeFit, TimeFit]]:
        return self._optional_fits(self._by_tp(self.bf16_vocab_time), tp, False)

    def bf16_vocab_activation_per_token(self, tp: int) -> Optional[float]:
        return self._optional_bytes(self._by_tp(self.bf16_vocab_activation_bytes_per_token), tp, False)

    def embedding_fits(self, tp: int) -> Optional[Tuple[TimeFit, TimeFit]]:
        return self._optional_fits(self._by_tp(self.embedding_time), tp, False)

    def fp8_tables(self, recipe: str, tp: int, sp: bool) -> "Fp8Entry":
        """The float8 layer's measurements at (tp, sp); a degree not measured is an error (never
        priced as bf16, nor scaled from another degree: float8's gain depends on the matmul
        shapes); a missing sp entry falls back to the one without, as every table does."""
        t = self.fp8.get(recipe)
        key = (tp, sp) if t is not None and (tp, sp) in t.time else (tp, False)
        if t is None or key not in t.time:
            have = ", ".join(sorted(self.fp8)) or "none"
            raise ProfileError(f"{self.path}: no 'layer.fp8.{recipe}.time.tp{tp}' table (fp8 recipes profiled: "
                               f"{have}): profile with tools/profile_model.py --fp8 {recipe} and {tp} among --tp, "
                               f"or lower --max-tp")
        return Fp8Entry(t.time[key], t.activation_bytes_per_token[key], t.checkpoint_bytes_per_token[key],
                        t.activation_constant_bytes.get(key, 0.0), t.recompute_fraction.get(key))


@dataclass
class Fp8Tables:
    """'layer.fp8.<recipe>': as 'layer.bf16', plus the bytes saved per micro-batch whatever its
    size (tensorwise keeps the float8 cast of every weight for backward)."""

    time: Dict[Tuple[int, bool], Tuple[TimeFit, TimeFit]]
    activation_bytes_per_token: Dict[Tuple[int, bool], float]
    checkpoint_bytes_per_token: Dict[Tuple[int, bool], float]
    activation_constant_bytes: Dict[Tuple[int, bool], float] = field(default_factory=dict)
    recompute_fraction: Dict[Tuple[int, bool], float] = field(default_factory=dict)


class Fp8Entry(NamedTuple):
    fits: Tuple[TimeFit, TimeFit]
    activation_per_token: float
    checkpoint_per_token: float
    constant: float
    recompute_fraction: Optional[float]


def _scaled_fits(hit: Tuple[Tuple[TimeFit, TimeFit], float]) -> Tuple[TimeFit, TimeFit]:
    (fwd, bwd), factor = hit
    return fwd.scaled(factor), bwd.scaled(factor)
