"""Sizes on the command line and the summaries the tools print."""
import re
from typing import Dict, List

from megatron_galvatron.errors import UserError

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}


def parse_size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise UserError(f"size {text!r}: use bytes with an optional K, M or G suffix (e.g. 4K, 512M)")
    n = int(float(m.group(1)) * _UNIT[m.group(2).upper()])
    if n < 1:
        raise UserError(f"size {text!r} must be at least 1 byte")
    return n


def sweep(lo: int, hi: int) -> List[int]:
    """lo, 2 lo, 4 lo, ... up to hi."""
    if hi < lo:
        raise UserError(f"the largest size ({hi} bytes) is below the smallest ({lo} bytes)")
    out = [lo]
    while out[-1] * 2 <= hi:
        out.append(out[-1] * 2)
    return out


def comm_summary(profile: Dict) -> str:
    lines = [f"{'collective':<15}{'group':>12}{'nodes':>7}{'latency us':>12}{'busbw GB/s':>12}{'fit err':>9}"]
    rows = [(op, key, e) for op, t in profile["collectives"].items() for key, e in t.items()]
    rows += [("p2p", f"pp{key}", e) for key, e in profile["p2p"].items()]
    for op, key, e in rows:
        lines.append(f"{op:<15}{key:>12}{'multi' if e['spans_nodes'] else 'one':>7}{e['latency_s'] * 1e6:>12.1f}"
                     f"{e['bandwidth_GBps']:>12.2f}{e['max_rel_error']:>9.1%}")
    ov = profile["overlap"]
    lines.append(f"overlap: compute x{ov['compute_slowdown']:.3f}, communication x{ov['comm_slowdown']:.3f}"
                 + (f" ({ov['note']})" if "note" in ov else ""))
    for op, pair in ov.get("by_collective", {}).items():
        lines.append(f"  beside {op}: compute x{pair['compute_slowdown']:.3f}, "
                     f"communication x{pair['comm_slowdown']:.3f}")
    return "\n".join(lines)


def model_summary(profile: Dict) -> str:
    lines = [f"{'layer':<17}{'fwd us/tok':>12}{'bwd us/tok':>12}{'fwd+bwd err':>12}{'act B/tok':>12}"
             f"{'ckpt B/tok':>12}{'recompute':>10}"]

    def recompute(table, key):  # the checkpointed backward's extra, as a share of the forward
        v = table.get("recompute_fraction", {}).get(key)
        return f"{v:>10.2f}" if v is not None else f"{'-':>10}"
    mem = profile["layer"]["memory"]
    for key, t in profile["layer"]["time"].items():
        err = max(t["fwd"]["max_rel_error"], t["bwd"]["max_rel_error"])
        lines.append(f"{key:<17}{t['fwd']['per_token_s'] * 1e6:>12.3f}{t['bwd']['per_token_s'] * 1e6:>12.3f}"
                     f"{err:>12.1%}{mem['activation_bytes_per_token'][key]:>12.0f}"
                     f"{mem['checkpoint_bytes_per_token'][key]:>12.0f}{recompute(profile['layer'], key)}")
    # on bf16 weights without autocast, then with float8 linears per recipe
    extra = [("bf16", profile["layer"].get("bf16", {}))]
    extra += [(recipe, t) for recipe, t in profile["layer"].get("fp8", {}).items()]
    for name, table in extra:
        for key, t in table.get("time", {}).items():
            err = max(t["fwd"]["max_rel_error"], t["bwd"]["max_rel_error"])
            lines.append(f"{key + ' ' + name:<17}{t['fwd']['per_token_s'] * 1e6:>12.3f}"
                         f"{t['bwd']['per_token_s'] * 1e6:>12.3f}{err:>12.1%}"
                         f"{table['activation_bytes_per_token'][key]:>12.0f}"
                         f"{table['checkpoint_bytes_per_token'][key]:>12.0f}{recompute(table, key)}")
    for key, t in profile["vocab"]["time"].items():
        lines.append(f"{'vocab ' + key:<17}{t['fwd']['per_token_s'] * 1e6:>12.3f}{t['bwd']['per_token_s'] * 1e6:>12.3f}"
                     f"{max(t['fwd']['max_rel_error'], t['bwd']['max_rel_error']):>12.1%}"
                     f"{profile['vocab']['activation_bytes_per_token'][key]:>12.0f}")
    opt, alloc = profile["optimizer"], profile["allocator"]
    lines.append(f"optimizer step: {opt['step_s_per_param'] * 1e12:.2f} ps/param; allocator: reserved/allocated "
                 f"{alloc['reserved_over_allocated']:.3f}, fixed {alloc['fixed_overhead_bytes'] / 2 ** 20:.0f} MiB")
    return "\n".join(lines)


def sequence_summary(layer: Dict, seq_lengths: List[int]) -> Dict:
    """model.json 'sequence': the lengths the sequence fits cover and whether the activation fit
    found an s^2 term (more than 1 % of the tp1 layer's bytes per token at the longest length)."""
    fit = layer["memory"]["activation_seq_fit"]["tp1"]
    top = max(seq_lengths)
    share = fit["quadratic_bytes"] * top / max(fit["linear_bytes"] + fit["quadratic_bytes"] * top, 1e-30)
    return {"seq_lengths": sorted(seq_lengths), "activation": "quadratic" if share > 0.01 else "linear",
            "quadratic_share_at_longest": share,
            "method": "per layout key: time = intercept_s + micro_batch * (linear_s * seq + quadratic_s * seq^2), "
                      "activation bytes = constant_bytes + micro_batch * (linear_bytes * seq + quadratic_bytes * "
                      "seq^2), non-negative least squares over the points"}
