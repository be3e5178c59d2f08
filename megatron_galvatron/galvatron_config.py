"""Hetu-Galvatron's JSON config files (comma-separated per-layer strings) read into a Plan.

Every key is honoured or refused, never ignored; numbers are taken as Galvatron writes them
(1, "1" or 1.0), and anything else is one PlanError naming the key."""
from typing import Any, Dict, List, Optional

from megatron_galvatron.plan import ULYSSES, LayerStrategy, Plan, PlanError, VocabStrategy, _pipeline_type, even_division

_GALVATRON_KEYS = {"pp_deg", "tp_sizes_enc", "tp_consecutive_flags", "dp_types_enc", "use_sp", "checkpoint",
                   "global_bsz", "chunks", "pp_division", "pipeline_type", "default_dp_type", "vtp", "vsp",
                   "embed_sdp", "cp_sizes_enc", "vocab_tp", "vocab_sp"}


def _int_list(key: str, v: Any) -> List[int]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        items = [v]
    elif isinstance(v, list):
        items = v
    elif isinstance(v, str):
        items = [x for x in v.replace(" ", "").split(",") if x != ""]
    else:
        raise PlanError(f"Galvatron config key {key!r} must be a comma-separated string of integers, got {v!r}")
    out = [_exact_int(x) for x in items]
    if None in out:
        raise PlanError(f"Galvatron config key {key!r} must be a comma-separated string of integers, got {v!r}")
    return out


def _exact_int(x: Any) -> Optional[int]:
    """x as an int when it spells one exactly (1, "1", 1.0); None otherwise (1.5, "a", true)."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    digits = x.strip().lstrip("-") if isinstance(x, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 18:  # int() refuses very long strings
        return int(x)
    return None


def _galvatron_int(d: Dict[str, Any], key: str, default: Any = None) -> int:
    v = _exact_int(d.get(key, default))
    if v is None:
        raise PlanError(f"Galvatron config key {key!r} must be an integer, got {d.get(key, default)!r}")
    return v


def from_galvatron_dict(d: Dict[str, Any], world_size: Optional[int] = None) -> Plan:
    """Import a Hetu-Galvatron JSON config. Every key is honoured or refused, never ignored.

    dp_types_enc: 0 = default_dp_type (ddp or zero2), 1 = SDP (zero3). use_sp / vsp select
    Ulysses sequence parallelism over the layer's tp_sizes_enc (vtp) ranks. Galvatron plans do
    not record the world size; it is derived from the first layer (tp * dp is not recorded
    either), so the caller passes the launch world size.
    """
    if not isinstance(d, dict):
        raise PlanError("a Galvatron config must be a JSON object of its keys (pp_deg, tp_sizes_enc, ...)")
    unknown = sorted(set(d) - _GALVATRON_KEYS)
    if unknown:
        raise PlanError(f"Galvatron config has key(s) {unknown} this runtime does not know; remove them "
                        f"or convert the plan by hand")
    for k in ("pp_deg", "tp_sizes_enc", "tp_consecutive_flags", "dp_types_enc", "global_bsz", "chunks"):
        if k not in d:
            raise PlanError(f"Galvatron config is missing key {k!r}")
    tp = _int_list("tp_sizes_enc", d["tp_sizes_enc"])
    n = len(tp)

    def per_layer(key: str, default: int) -> List[int]:
        if key not in d:
            return [default] * n
        vals = _int_list(key, d[key])
        if len(vals) != n:
            raise PlanError(f"Galvatron config {key!r} has {len(vals)} entries but tp_sizes_enc has {n}: "
                            f"give one entry per layer")
        return vals

    consec = per_layer("tp_consecutive_flags", 1)
    sdp = per_layer("dp_types_enc", 0)
    use_sp = per_layer("use_sp", 0)
    ckpt = per_layer("checkpoint", 0)
    cp = per_layer("cp_sizes_enc", 1)
    if any(c != 1 for c in cp):
        raise PlanError("Galvatron config sets cp_sizes_enc > 1 (context parallelism), which this runtime does not "
                        "implement: set every entry to 1")
    vsp = _galvatron_int(d, "vsp" if "vsp" in d else "vocab_sp", 0)
    default_dp = d.get("default_dp_type", "ddp")
    if default_dp not in ("ddp", "zero2"):
        raise PlanError(f"Galvatron config default_dp_type={default_dp!r}: use ddp or zero2")
    for name, vals in (("tp_consecutive_flags", consec), ("dp_types_enc", sdp), ("checkpoint", ckpt),
                       ("use_sp", use_sp), ("vsp", [vsp])):
        if any(v not in (0, 1) for v in vals):
            raise PlanError(f"Galvatron config {name!r} entries must be 0 or 1, got {vals}")
    # use_sp=1: the layer's tp_sizes_enc entry is its Ulysses group size (Galvatron runs no TP there)
    layers = [LayerStrategy(tp=tp[i], tp_consec=bool(consec[i]), dp_type="zero3" if sdp[i] else default_dp,
                            sp=ULYSSES if use_sp[i] else False, checkpoint=bool(ckpt[i])) for i in range(n)]
    pp_deg = _galvatron_int(d, "pp_deg")
    if pp_deg < 1:
        raise PlanError(f"Galvatron config pp_deg={pp_deg} must be >= 1")
    division = _int_list("pp_division", d["pp_division"]) if "pp_division" in d else even_division(n, pp_deg)
    vtp = _galvatron_int(d, "vtp" if "vtp" in d else "vocab_tp", 1)
    embed_sdp = _galvatron_int(d, "embed_sdp", 0)
    if embed_sdp not in (0, 1):
        raise PlanError(f"Galvatron config embed_sdp={embed_sdp}: use 0 (default_dp_type) or 1 (zero3)")
    vocab = VocabStrategy(tp=vtp, tp_consec=True, dp_type="zero3" if embed_sdp else default_dp,
                          sp=ULYSSES if vsp else False)
    if world_size is None:
        raise PlanError("a Galvatron config does not record the world size: pass the launch world size")
    return Plan(world_size=world_size, pp_deg=pp_deg, pp_division=division, global_bsz=_galvatron_int(d, "global_bsz"),
                chunks=_galvatron_int(d, "chunks"), layers=layers, vocab=vocab,
                pipeline_type=_pipeline_type(d.get("pipeline_type", "gpipe")))
