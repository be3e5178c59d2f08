"""The layer's fits in sequence length (model.json 'sequence', docs/profile_format.md): what they
hold once read, how they are read, and the model profile they give at another sequence length.

The per-token tables of a profile hold at the length they were measured at only: attention's
scores and weighted values cost per sample a multiple of seq^2, so the time per token grows with
the sequence. The fits keep that term apart, and `at_seq_length` turns them back into the
per-token tables the cost model reads, at the length it is asked for."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from megatron_galvatron.profile_format.schema import TimeFit, tp_key

if TYPE_CHECKING:
    from megatron_galvatron.profile_format.schema import ModelProfile

Key = Tuple[int, bool]


@dataclass(frozen=True)
class SeqTimeFit:
    """t = intercept_s + micro_batch * (linear_s * seq + quadratic_s * seq^2)."""

    intercept_s: float
    linear_s: float
    quadratic_s: float

    def at(self, seq: int) -> TimeFit:
        """The fit in tokens (micro_batch * seq) that holds at sequence length `seq`."""
        return TimeFit(self.intercept_s, self.linear_s + self.quadratic_s * seq)

    def slowed(self, factor: float) -> "SeqTimeFit":
        return SeqTimeFit(self.intercept_s * factor, self.linear_s * factor, self.quadratic_s * factor)


@dataclass(frozen=True)
class SeqBytesFit:
    """bytes saved for backward = constant_bytes + position_bytes * seq
                                  + micro_batch * (linear_bytes * seq + quadratic_bytes * seq^2)."""

    constant_bytes: float
    position_bytes: float
    linear_bytes: float
    quadratic_bytes: float

    def per_micro_batch(self, seq: int) -> float:
        return self.constant_bytes + self.position_bytes * seq

    def per_token(self, seq: int) -> float:
        return self.linear_bytes + self.quadratic_bytes * seq


@dataclass
class SeqTables:
    """The fits of one set of layer tables ('layer', 'layer.bf16' or 'layer.fp8.<recipe>'):
    per layout key, (fwd, bwd, checkpointed bwd or None) and the activation bytes."""

    time: Dict[Key, Tuple[SeqTimeFit, SeqTimeFit, Optional[SeqTimeFit]]]
    activation: Dict[Key, SeqBytesFit]

    def slowed(self, factor: float) -> "SeqTables":
        return SeqTables({k: tuple(None if f is None else f.slowed(factor) for f in v)
                          for k, v in self.time.items()}, dict(self.activation))


# -------------------------------------------------------------------- reading

def parse_sequence(r, d: Dict) -> Tuple[Tuple[int, ...], str, Dict[str, SeqTables]]:
    """(lengths, "linear" or "quadratic", fits per table set) of a parsed model.json `d`; empty
    without its optional 'sequence' key. With it, every time entry of every layer table needs its
    'seq_fit' and every key of 'time' an 'activation_seq_fit'."""
    if "sequence" not in d:
        return (), "", {}
    seqd = r.get(d, "sequence", "", dict)
    lengths = r.get(seqd, "seq_lengths", "sequence", list)
    if (len(lengths) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in lengths)
            or len(set(lengths)) != len(lengths)):
        raise r.fail(f"key 'sequence.seq_lengths' must list two or more distinct positive lengths, got {lengths!r}")
    kind = r.get(seqd, "activation", "sequence", str)
    if kind not in ("linear", "quadratic"):
        raise r.fail(f"key 'sequence.activation' must be 'linear' or 'quadratic', got {kind!r}")
    layer = d["layer"]
    sets = {"layer": (layer, layer["memory"], "layer", "layer.memory")}
    if isinstance(layer.get("bf16"), dict):
        sets["bf16"] = (layer["bf16"], layer["bf16"], "layer.bf16", "layer.bf16")
    for recipe, t in layer.get("fp8", {}).items():
        sets[f"fp8.{recipe}"] = (t, t, f"layer.fp8.{recipe}", f"layer.fp8.{recipe}")
    fits = {}
    for name, (obj, mem, where, mem_where) in sets.items():
        if "time" in obj:
            fits[name] = _tables(r, obj["time"], mem, where, mem_where)
    return tuple(sorted(lengths)), kind, fits


def _tables(r, times: Dict, mem: Dict, where: str, mem_where: str) -> SeqTables:
    acts = r.get(mem, "activation_seq_fit", mem_where, dict)
    time, act = {}, {}
    for k, entry in r.tp_table(times, f"{where}.time").items():
        name = f"{where}.time.{tp_key(*k)}"
        fwd, bwd = (_time(r, r.get(entry, p, name, dict), f"{name}.{p}") for p in ("fwd", "bwd"))
        ck = entry.get("bwd_checkpointed")
        ckpt = _time(r, ck, f"{name}.bwd_checkpointed") if isinstance(ck, dict) and "seq_fit" in ck else None
        time[k] = (fwd, bwd, ckpt)
        raw = r.get(acts, tp_key(*k), f"{mem_where}.activation_seq_fit", dict)
        aw = f"{mem_where}.activation_seq_fit.{tp_key(*k)}"
        act[k] = SeqBytesFit(*(r.number(raw, f, aw) if f in raw or f != "position_bytes" else 0.0
                               for f in ("constant_bytes", "position_bytes", "linear_bytes", "quadratic_bytes")))
    return SeqTables(time, act)


def _time(r, entry: Dict, where: str) -> SeqTimeFit:
    fit = r.get(entry, "seq_fit", where, dict)
    return SeqTimeFit(*(r.number(fit, f, f"{where}.seq_fit") for f in ("intercept_s", "linear_s", "quadratic_s")))


# -------------------------------------------------------------------- at another length

def at_seq_length(p: "ModelProfile", seq: int) -> "ModelProfile":
    """A copy of `p` whose layer tables (time, recompute share, activation bytes per token and per
    micro-batch) are its fits evaluated at `seq`, and whose model says seq_length = seq. The LM
    head, the embedding and the checkpointed layer's input are per token whatever the length and
    stay as measured. `p` itself is left as it is; a profile without fits is returned as it is."""
    if not p.seq_fits:
        return p
    out = copy.deepcopy(p)
    out.model["seq_length"] = seq
    for name, tables in p.seq_fits.items():
        time, act, const, recompute = _targets(out, name)
        for k, (fwd, bwd, ckpt) in tables.time.items():
            f, b = fwd.at(seq), bwd.at(seq)
            time[k] = (f, b)
            if ckpt is not None and f(seq) > 0:  # as the profiler takes it: (checkpointed bwd - bwd) / fwd
                recompute[k] = max(0.0, (ckpt.at(seq)(seq) - b(seq)) / f(seq))
        for k, a in tables.activation.items():
            if const is not None and k in const:
                act[k], const[k] = a.per_token(seq), a.per_micro_batch(seq)
            else:  # no per-micro-batch table to hold the per-position bytes: counted per token (exact at one sample)
                act[k] = a.per_token(seq) + a.position_bytes
    return out


def _targets(p: "ModelProfile", name: str):
    """(time, activation per token, constant or None, recompute share) tables of one set."""
    if name == "layer":
        return p.layer_time, p.activation_bytes_per_token, p.layer_activation_constant, p.recompute_fraction
    if name == "bf16":
        return p.bf16_layer_time, p.bf16_activation_bytes_per_token, None, p.bf16_recompute_fraction
    t = p.fp8[name.split(".", 1)[1]]
    return t.time, t.activation_bytes_per_token, t.activation_constant_bytes, t.recompute_fraction


def describe(p: "ModelProfile", seq: int) -> str:
    """One line: how the layer tables at `seq` were obtained from the fits."""
    lo, hi = p.seq_lengths[0], p.seq_lengths[-1]
    how = ("extrapolated" if not lo <= seq <= hi else "taken" if seq in p.seq_lengths else "interpolated")
    return (f"layer time and activation memory at --seq-length {seq} {how} from the sequence-length fits of "
            f"{p.path} (profiled at {', '.join(map(str, p.seq_lengths))}; activation memory "
            f"{p.seq_activation} in the length, time linear plus attention's quadratic term)")
