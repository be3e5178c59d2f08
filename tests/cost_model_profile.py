"""A small hand-written profile and the cost models over it that the cost-model tests price.

Cluster: 8 GPUs, 2 nodes of 4. Intra-node links 100 GB/s bus bandwidth and 10 us latency,
inter-node 10 GB/s and 20 us; p2p 25 GB/s. Overlap slows compute 1.1x and communication 1.25x.
Model: gpt2, hidden 64, FFN 256, seq 128; a layer has 50,000 parameters, the vocab matrix 64,000.
The optimizer step takes 1e-10 s per parameter, so the per-iteration gradient passes (clip: 12 B
per fp32 gradient; replicated units also zero their 4 B buffer) take 12/28 or 16/28 of that.
"""
import pytest

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import LayerStrategy
from megatron_galvatron.profile_format import parse_hardware, parse_model
from search.comm import Network
from tests.earlier_runtime import EarlierRuntimeCostModel

INTRA = {"latency_s": 1e-5, "bandwidth_GBps": 100.0, "points": []}
INTER = {"latency_s": 2e-5, "bandwidth_GBps": 10.0, "points": []}


def fit(intercept, per_token):
    return {"intercept_s": intercept, "per_token_s": per_token, "points": []}


def hardware_dict():
    # "2_strided" / "4_strided" are measured with stride 4 / 2 over 8 GPUs: they cross nodes
    groups = {"2_consec": INTRA, "4_consec": INTRA, "8_consec": INTER, "2_strided": INTER, "4_strided": INTER}
    return {
        "schema": "megatron_galvatron.hardware_profile/1",
        "hardware": {"gpu_name": "test", "num_gpus": 8, "num_nodes": 2, "gpus_per_node": 4, "torch": "x",
                     "nccl": "x"},
        "command": "hand-written",
        "collectives": {op: dict(groups) for op in ("all_reduce", "all_gather", "reduce_scatter")},
        "p2p": {"2": {"latency_s": 1e-5, "bandwidth_GBps": 25.0, "points": []}},
        "overlap": {"compute_slowdown": 1.1, "comm_slowdown": 1.25},
    }


CFG = GPTConfig(family="gpt2", num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=4,
                ffn_hidden_size=256, vocab_size=1000, seq_length=128)


def model_dict(cfg=CFG):
    return {
        "schema": "megatron_galvatron.model_profile/1",
        "model": cfg.to_dict(), "dtype": "bf16", "hardware": {}, "command": "hand-written",
        "layer": {
            "time": {"tp1": {"fwd": fit(1e-3, 1e-6), "bwd": fit(2e-3, 2e-6)},
                     "tp2": {"fwd": fit(1e-3, 6e-7), "bwd": fit(2e-3, 1.2e-6)},
                     "tp2_sp": {"fwd": fit(1e-3, 5e-7), "bwd": fit(2e-3, 1.2e-6)}},
            "memory": {"param_count": 50000,
                       "activation_bytes_per_token": {"tp1": 2000, "tp2": 1200, "tp2_sp": 800},
                       "checkpoint_bytes_per_token": {"tp1": 128, "tp2": 128, "tp2_sp": 64}}},
        "vocab": {"param_count": 64000,
                  "time": {"tp1": {"fwd": fit(5e-4, 1e-7), "bwd": fit(1e-3, 2e-7)}},
                  "activation_bytes_per_token": {"tp1": 4000, "tp2": 2000}},
        "optimizer": {"step_s_per_param": 1e-10},
        "allocator": {"reserved_over_allocated": 1.25, "fixed_overhead_bytes": 1e9},
    }


POSITIONS = 128 * 64  # gpt2's learned position embeddings, on the first stage


@pytest.fixture
def cm():
    hw = parse_hardware(hardware_dict())
    # Hand-computed expectations below price replicated units as they run under autocast; the
    # bf16-compute default is checked separately at the end.
    return EarlierRuntimeCostModel(CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4))


def ddp(tp=1, **kw):
    return LayerStrategy(tp=tp, **kw)


@pytest.fixture
def cm_full():
    """The same profile with the tables newer profilers write: the autocast weight copies measured,
    the layer and LM head measured as FSDP runs them (bf16 weights, no autocast), the embedding timed."""
    d = model_dict()
    d["layer"]["memory"]["activation_constant_bytes"] = {"tp1": 90000.0, "tp2": 45000.0}
    d["layer"]["sharded"] = {"time": {"tp1": {"fwd": fit(1e-3, 9e-7), "bwd": fit(2e-3, 1.8e-6)}},
                             "activation_bytes_per_token": {"tp1": 1700.0},
                             "checkpoint_bytes_per_token": {"tp1": 130.0}}
    d["vocab"]["activation_constant_bytes"] = {"tp1": 120000.0}
    d["vocab"]["embedding_time"] = {"tp1": {"fwd": fit(1e-5, 1e-8), "bwd": fit(1e-4, 2e-8)}}
    d["vocab"]["sharded"] = {"time": {"tp1": {"fwd": fit(4e-4, 1e-7), "bwd": fit(9e-4, 2e-7)}},
                             "activation_bytes_per_token": {"tp1": 3800.0}}
    hw = parse_hardware(hardware_dict())
    return EarlierRuntimeCostModel(CFG, parse_model(d), Network(hw, num_gpus=8, gpus_per_node=4))
