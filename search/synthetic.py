"""Synthetic profiles from a few hardware numbers, for tests, benchmarks and trying the search
before profiling a real cluster:

    python -m search.synthetic --out profiles/h100 --num-gpus 16 --num-nodes 2 \\
        --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --seq-length 4096 --vocab-size 32000 \\
        --model-family llama --ffn-hidden-size 11008

Times come from FLOPs at a fixed fraction of peak, activation memory from Megatron's per-layer
formulas (flash attention, so no seq^2 term), links from bus bandwidth + latency per hop.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Dict, List

from megatron_galvatron import profile_format as profiles
from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.model.config import GPTConfig, add_model_args, config_from_args
from search.comm import spans_nodes

# H100 SXM node: NVLink 4 inside the node, one 400 Gb/s InfiniBand NIC per GPU between nodes.
PRESETS: Dict[str, Dict[str, Any]] = {
    "h100": dict(gpu_name="NVIDIA H100 80GB HBM3 (synthetic)", peak_flops=989e12, mfu=0.5, hbm_GBps=3350.0,
                 intra_busbw_GBps=360.0, inter_busbw_GBps=45.0, intra_latency_s=10e-6, inter_latency_s=25e-6,
                 p2p_intra_GBps=250.0, p2p_inter_GBps=45.0, compute_slowdown=1.1, comm_slowdown=1.2,
                 reserved_over_allocated=1.05, fixed_overhead_bytes=1.5 * 2 ** 30),
    # links so fast that communication all but vanishes (overlap still slows compute a little)
    "fast-links": dict(gpu_name="synthetic GPU with ideal links", peak_flops=989e12, mfu=0.5, hbm_GBps=3350.0,
                       intra_busbw_GBps=1e6, inter_busbw_GBps=1e6, intra_latency_s=1e-9, inter_latency_s=1e-9,
                       p2p_intra_GBps=1e6, p2p_inter_GBps=1e6, compute_slowdown=1.05, comm_slowdown=1.05,
                       reserved_over_allocated=1.0, fixed_overhead_bytes=0.0),
}
_POINT_BYTES = [2 ** 20, 2 ** 24, 2 ** 28]


def preset(name: str, **overrides: Any) -> Dict[str, Any]:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    p = dict(PRESETS[name])
    p.update(overrides)
    return p


def _pow2_upto(n: int) -> List[int]:
    out, k = [], 2
    while k <= n:
        out.append(k)
        k *= 2
    if n > 1 and n not in out:
        out.append(n)
    return out


def _comm_entry(op: str, n: int, latency: float, busbw: float) -> Dict[str, Any]:
    pts = [[b, latency + profiles.bus_factor(op, n) * b / (busbw * 1e9)] for b in _POINT_BYTES]
    return {"latency_s": latency, "bandwidth_GBps": busbw, "points": pts}


def hardware_profile(num_gpus: int, gpus_per_node: int = 8, hw: Dict[str, Any] = None) -> Dict[str, Any]:
    hw = hw or preset("h100")
    gpus_per_node = min(gpus_per_node, num_gpus)
    if num_gpus % gpus_per_node:
        raise UserError(f"--num-gpus={num_gpus} is not a multiple of the GPUs per node ({gpus_per_node})")
    collectives: Dict[str, Dict[str, Any]] = {op: {} for op in profiles.COLLECTIVES}
    for n in _pow2_upto(num_gpus):
        for layout in ("consec", "strided"):
            stride = 1 if layout == "consec" else max(1, num_gpus // n)
            inter = spans_nodes(n, stride, gpus_per_node)
            bw = hw["inter_busbw_GBps"] if inter else hw["intra_busbw_GBps"]
            hop = hw["inter_latency_s"] if inter else hw["intra_latency_s"]
            lat = hop * max(1.0, math.log2(n))
            for op in profiles.COLLECTIVES:
                collectives[op][profiles.group_key(n, layout)] = _comm_entry(op, n, lat, bw)
    p2p = {}
    for pp in _pow2_upto(num_gpus):
        if num_gpus % pp:
            continue
        inter = num_gpus // pp >= gpus_per_node
        bw = hw["p2p_inter_GBps"] if inter else hw["p2p_intra_GBps"]
        lat = hw["inter_latency_s"] if inter else hw["intra_latency_s"]
        p2p[str(pp)] = {"latency_s": lat, "bandwidth_GBps": bw,
                        "points": [[b, lat + b / (bw * 1e9)] for b in _POINT_BYTES]}
    return {
        "schema": profiles.HARDWARE_SCHEMA,
        "hardware": {"gpu_name": hw["gpu_name"], "num_gpus": num_gpus, "num_nodes": num_gpus // gpus_per_node,
                     "gpus_per_node": gpus_per_node, "torch": "synthetic", "nccl": "synthetic"},
        "command": "python -m search.synthetic (bus bandwidth model, not measured)",
        "collectives": collectives,
        "p2p": p2p,
        "overlap": {"compute_slowdown": hw["compute_slowdown"], "comm_slowdown": hw["comm_slowdown"]},
    }


def _activation_per_token(cfg: GPTConfig, tp: int, sp: bool) -> float:
    """Bytes per token kept for backward by one layer (Megatron's accounting, flash attention)."""
    h, f, kv = cfg.hidden_size, cfg.ffn_hidden_size, cfg.kv_size
    if not cfg.swiglu:
        replicated, split = 10 * h, 8 * h + 4 * f  # 10h + 24h for f = 4h
    else:
        replicated, split = 8 * h, 2 * (h + 2 * kv) + 2 * h + 6 * f
    return (replicated + split) / tp if sp else replicated + split / tp


def _time_entry(intercept: float, per_token: float, seq: int) -> Dict[str, Any]:
    pts = [[mb, seq, intercept + per_token * mb * seq] for mb in (1, 2, 4, 8)]
    return {"intercept_s": intercept, "per_token_s": per_token, "points": pts}


def model_profile(cfg: GPTConfig, max_tp: int = 64, hw: Dict[str, Any] = None) -> Dict[str, Any]:
    hw = hw or preset("h100")
    h, s = cfg.hidden_size, cfg.seq_length
    layer_params = cfg.layer_param_count()
    # matmul FLOPs per token, plus causal flash attention (half of 4 * seq * hidden)
    fwd_flops = 2 * layer_params + 2 * s * h
    times, act, ckpt, vtimes, vact = {}, {}, {}, {}, {}
    tp = 1
    while tp <= max_tp:
        eff = hw["peak_flops"] * hw["mfu"] * 0.93 ** math.log2(tp)  # thinner GEMMs run less efficiently
        per_tok = fwd_flops / tp / eff
        for sp in (False, True):
            if tp == 1 and sp:
                continue
            key = profiles.tp_key(tp, sp)
            times[key] = {"fwd": _time_entry(1.5e-4, per_tok, s), "bwd": _time_entry(3e-4, 2 * per_tok, s)}
            act[key] = _activation_per_token(cfg, tp, sp)
            ckpt[key] = 2 * h / (tp if sp else 1)
        v_tok = 2 * cfg.vocab_param_count() / tp / eff
        vtimes[profiles.tp_key(tp)] = {"fwd": _time_entry(1e-4, v_tok, s), "bwd": _time_entry(2e-4, 2 * v_tok, s)}
        vact[profiles.tp_key(tp)] = 4.0 * cfg.vocab_size / tp
        tp *= 2
    return {
        "schema": profiles.MODEL_SCHEMA,
        "model": cfg.to_dict(),
        "dtype": "bf16",
        "hardware": {"gpu_name": hw["gpu_name"], "num_gpus": 1, "torch": "synthetic"},
        "command": "python -m search.synthetic (FLOP and Megatron memory formulas, not measured)",
        "layer": {"time": times, "memory": {"param_count": layer_params, "activation_bytes_per_token": act,
                                            "checkpoint_bytes_per_token": ckpt}},
        "vocab": {"param_count": cfg.vocab_param_count(), "time": vtimes, "activation_bytes_per_token": vact},
        # fused AdamW streams ~30 bytes per parameter through HBM
        "optimizer": {"step_s_per_param": 30.0 / (hw["hbm_GBps"] * 1e9 * 0.7)},
        "allocator": {"reserved_over_allocated": hw["reserved_over_allocated"],
                      "fixed_overhead_bytes": hw["fixed_overhead_bytes"]},
    }


def write_profiles(out_dir: str, cfg: GPTConfig, num_gpus: int, gpus_per_node: int = 8,
                   preset_name: str = "h100", **overrides: Any) -> str:
    hw = preset(preset_name, **overrides)
    profiles.write_hardware(hardware_profile(num_gpus, gpus_per_node, hw), out_dir)
    profiles.write_model(model_profile(cfg, hw=hw), out_dir)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="search.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="profile directory to write")
    parser.add_argument("--num-gpus", type=int, required=True)
    parser.add_argument("--num-nodes", type=int, default=None, help="default: num-gpus / 8, at least 1")
    parser.add_argument("--preset", default="h100", choices=sorted(PRESETS))
    add_model_args(parser, required=True)
    args = parser.parse_args(argv)
    with exit_on_user_error("search.synthetic"):
        cfg = config_from_args(args)
        nodes = args.num_nodes or max(1, args.num_gpus // 8)
        if args.num_gpus % nodes:
            raise UserError(f"--num-gpus={args.num_gpus} is not divisible by --num-nodes={nodes}")
        write_profiles(args.out, cfg, args.num_gpus, args.num_gpus // nodes, args.preset)
        print(f"wrote {args.out}/{profiles.HARDWARE_FILE} and {args.out}/{profiles.MODEL_FILE}")


if __name__ == "__main__":
    main()
