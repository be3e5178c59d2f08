"""Every cost-model term against numbers worked out by hand from a small hand-written profile.

Cluster: 8 GPUs, 2 nodes of 4. Intra-node links 100 GB/s bus bandwidth and 10 us latency,
inter-node 10 GB/s and 20 us; p2p 25 GB/s. Overlap slows compute 1.1x and communication 1.25x.
Model: gpt2, hidden 64, FFN 256, seq 128; a layer has 50,000 parameters, the vocab matrix 64,000.
The optimizer step takes 1e-10 s per parameter, so the per-iteration gradient passes (clip: 12 B
per fp32 gradient; replicated units also zero their 4 B buffer) take 12/28 or 16/28 of that.
"""
import dataclasses

import pytest

from megatron_galvatron.layout import Layout
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from megatron_galvatron.profile_format import parse_hardware, parse_model
from search.comm import Network
from search.cost_model import CostModel
from megatron_galvatron.model.config import GPTConfig
from search.pipeline_time import clock_gain_bound, clock_scales, pipeline_iteration_time
from search.stage_memory import InFlight, in_flight, microbatches_in_flight, model_state_bytes

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


@pytest.fixture
def cm():
    hw = parse_hardware(hardware_dict())
    # Hand-computed expectations below price replicated units as they run under autocast; the
    # bf16-compute default is checked separately at the end.
    return CostModel(CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4),
                     replicated_autocast=True)


def ddp(tp=1, **kw):
    return LayerStrategy(tp=tp, **kw)


# ------------------------------------------------------------------ communication

def test_collective_bus_bandwidth_times(cm):
    net = cm.net
    assert net.collective("all_reduce", 4, 1, 1e6) == pytest.approx(1e-5 + 2 * 3 / 4 * 1e6 / 100e9)
    assert net.collective("all_gather", 2, 1, 1e6) == pytest.approx(1e-5 + 1 / 2 * 1e6 / 100e9)
    assert net.collective("reduce_scatter", 4, 1, 1e6) == pytest.approx(1e-5 + 3 / 4 * 1e6 / 100e9)
    # ranks 0 and 4 sit on different nodes: the inter-node measurement
    assert net.collective("all_reduce", 2, 4, 1e6) == pytest.approx(2e-5 + 1e6 / 10e9)
    # ranks 0 and 2 share a node: the profile's "2_strided" crossed nodes, so "2_consec" is used
    assert net.collective("all_reduce", 2, 2, 1e6) == pytest.approx(1e-5 + 1e6 / 100e9)
    assert net.collective("all_reduce", 1, 1, 1e6) == 0.0
    assert net.p2p(2, 4, 1e6) == pytest.approx(1e-5 + 1e6 / 25e9)


def test_overlap_of_compute_and_communication(cm):
    assert cm.net.overlap(1.0, 0.0) == 1.0
    assert cm.net.overlap(0.0, 0.5) == 0.5
    # 0.5 s of communication takes 0.625 s beside compute; meanwhile compute runs at 1/1.1 speed,
    # so it loses 0.625 x (1 - 1/1.1) s and finishes alone after the communication
    assert cm.net.overlap(1.0, 0.5) == pytest.approx(1.0 + 0.625 * (1 - 1 / 1.1))
    # compute (1.1 s beside communication) finishes first, having held the link back 1.1 x (1 - 1/1.25) s
    assert cm.net.overlap(1.0, 2.0) == pytest.approx(2.0 + 1.1 * (1 - 1 / 1.25))
    # both end together: compute x compute_slowdown = comm x comm_slowdown
    assert cm.net.overlap(1.25, 1.1) == pytest.approx(1.375)


# ------------------------------------------------------------------ layer time
# stage of 4 ranks, micro-batch of 8 samples

def test_compute_scaled_by_tp_and_sp(cm):
    # tp1: dp 4, 2 samples = 256 tokens per rank
    assert cm.layer_compute(ddp(), 4, 8) == pytest.approx((1e-3 + 256e-6, 2e-3 + 512e-6))
    # tp2: dp 2, 4 samples = 512 tokens
    assert cm.layer_compute(ddp(2), 4, 8) == pytest.approx((1e-3 + 6e-7 * 512, 2e-3 + 1.2e-6 * 512))
    assert cm.layer_compute(ddp(2, sp=True), 4, 8)[0] == pytest.approx(1e-3 + 5e-7 * 512)
    # tp4 was not profiled: scaled from tp2 by 2/4
    assert cm.layer_compute(ddp(4), 4, 8) == pytest.approx((1e-3 + 3e-7 * 1024, 2e-3 + 6e-7 * 1024))


def test_tensor_parallel_communication(cm):
    bf16, fp32 = 4 * 128 * 64 * 2, 4 * 128 * 64 * 4  # 4 samples x seq x hidden

    def ar(n):
        return 1e-5 + 2 * (1 / 2) * n / 100e9

    def ag(n):  # = reduce-scatter here
        return 1e-5 + (1 / 2) * n / 100e9
    # replicated (autocast): the row-parallel outputs are bf16, the gradients of the fp32 norm
    # outputs the column-parallel linears take are fp32
    assert cm.tp_comm(ddp(2), 4, 8) == pytest.approx((2 * ar(bf16), 2 * ar(fp32)))
    assert cm.tp_comm(ddp(2, sp=True), 4, 8) == pytest.approx((2 * (ag(fp32) + ag(bf16)), 2 * (ag(bf16) + ag(fp32))))
    # FSDP units are bf16 throughout
    assert cm.tp_comm(ddp(2, sp=True, dp_type="zero3"), 4, 8) == pytest.approx((4 * ag(bf16), 4 * ag(bf16)))
    assert cm.tp_comm(ddp(1), 4, 8) == (0.0, 0.0)


def test_ddp_gradient_all_reduce_overlaps_last_backward(cm):
    fwd, bwd = 1e-3 + 256e-6, 2e-3 + 512e-6
    ar = 1e-5 + 2 * 3 / 4 * (4 * 50000) / 100e9
    t = cm.layer_time(ddp(), 4, 8)
    assert t.per_mb == pytest.approx(fwd + bwd)
    # the all-reduce (1.25 x ar beside compute) ends first; the backward lost 1 - 1/1.1 of that time
    assert 1.25 * ar < 1.1 * bwd
    step = 1e-10 * 50000
    assert t.per_iter == pytest.approx(1.25 * ar * (1 - 1 / 1.1) + step + step * 16 / 28)


def test_grad_passes_priced_at_the_optimizer_bandwidth(cm):
    assert cm.grad_passes(28e6, replicated=True) == pytest.approx(1e-10 * 16e6)
    assert cm.grad_passes(28e6, replicated=False) == pytest.approx(1e-10 * 12e6)


def test_zero2_gathers_every_forward_and_reduce_scatters_once(cm):
    fwd, bwd = 1e-3 + 256e-6, 2e-3 + 512e-6
    rs = 1e-5 + 3 / 4 * (4 * 50000) / 100e9
    ag = 1e-5 + 3 / 4 * (2 * 50000) / 100e9
    t = cm.layer_time(ddp(dp_type="zero2"), 4, 8)
    # FSDP2 reshards after the backward: the next forward gathers again, prefetched beside the
    # previous layer's forward (this layer's forward stands in for it)
    # FSDP2's own passes, at the optimizer's 1e-10 s per 28 bytes: the gather's copy-in (10 B per
    # local parameter, a quarter of them) and copy-out (4 B per unsharded parameter), the fp32
    # accumulation (10 B), taken back once per iteration, and the reduce-scatter's copy-in (6 B)
    gather = 1e-10 * 50000 * (4 + 10 / 4) / 28
    accumulate, reduce_in = 1e-10 * 50000 * 10 / 28, 1e-10 * 50000 * 6 / 28
    assert t.per_mb == pytest.approx(fwd + 1.25 * ag * (1 - 1 / 1.1) + bwd + gather + accumulate)
    cm.zero_prefetch = False  # nothing to hide behind without the prefetch
    assert cm.layer_time(ddp(dp_type="zero2"), 4, 8).per_mb == pytest.approx(fwd + ag + bwd + gather + accumulate)
    step = 1e-10 * 50000 / 4
    assert t.per_iter == pytest.approx(1.25 * rs * (1 - 1 / 1.1) + step + step * 12 / 28 - accumulate + reduce_in)


def test_zero3_gathers_every_micro_batch(cm):
    fwd, bwd = 1e-3 + 256e-6, 2e-3 + 512e-6
    ag = 1e-5 + 3 / 4 * (2 * 50000) / 100e9
    rs = 1e-5 + 3 / 4 * (4 * 50000) / 100e9
    t = cm.layer_time(ddp(dp_type="zero3"), 4, 8)
    # the forward's gather is prefetched beside the forward; the backward's gather and
    # reduce-scatter run beside the backward
    # and FSDP2 copies each gather's input in and output out (2 x (10 B per local parameter + 4 B
    # per unsharded one)) and each micro-batch's gradient into the reduce-scatter (6 B)
    passes = 1e-10 * 50000 * (2 * (10 / 4 + 4) + 6) / 28
    assert t.per_mb == pytest.approx(fwd + 1.25 * ag * (1 - 1 / 1.1) + bwd + 1.25 * (ag + rs) * (1 - 1 / 1.1)
                                     + passes)
    step = 1e-10 * 50000 / 4
    assert t.per_iter == pytest.approx(step + step * 12 / 28)


def test_overlap_measured_per_collective():
    """'overlap.by_collective': each collective slows the compute beside it by its own measured
    factor; unmeasured ones by the overall pair; several in a row shorter than the compute add
    up, longer ones run on at their time-weighted factors."""
    d = hardware_dict()
    d["overlap"]["by_collective"] = {"all_gather": {"compute_slowdown": 1.05, "comm_slowdown": 1.0},
                                     "reduce_scatter": {"compute_slowdown": 1.3, "comm_slowdown": 1.1}}
    net = Network(parse_hardware(d), num_gpus=8, gpus_per_node=4)
    assert net.overlap(1.0, 0.1, "all_gather") == pytest.approx(1.0 + 0.1 * (1 - 1 / 1.05))
    assert net.overlap(1.0, 0.1, "all_reduce") == pytest.approx(1.0 + 0.1 * 1.25 * (1 - 1 / 1.1))
    got = net.overlap_many(1.0, [(0.1, "all_gather"), (0.2, "reduce_scatter")])
    assert got == pytest.approx(1.0 + 0.1 * (1 - 1 / 1.05) + 0.2 * 1.1 * (1 - 1 / 1.3))
    cs, ms = (1.0 * 1.05 + 2.0 * 1.3) / 3.0, (1.0 * 1.0 + 2.0 * 1.1) / 3.0  # communication outlasts compute
    got = net.overlap_many(0.5, [(1.0, "all_gather"), (2.0, "reduce_scatter")])
    assert got == pytest.approx(3.0 + 0.5 * cs * (1 - 1 / ms))
    # a ZeRO-3 layer's backward: its gather and reduce-scatter at their own factors
    c = CostModel(CFG, parse_model(model_dict()), net, replicated_autocast=True)
    ag = 1e-5 + 3 / 4 * (2 * 50000) / 100e9
    rs = 1e-5 + 3 / 4 * (4 * 50000) / 100e9
    bwd = 2e-3 + 512e-6
    _, b_extra, _ = c._dp_sync("zero3", 50000, 4, ddp(dp_type="zero3"), 1e-3 + 256e-6, bwd)
    assert b_extra == pytest.approx(ag * (1 - 1 / 1.05) + rs * 1.1 * (1 - 1 / 1.3))
    d["overlap"]["by_collective"] = {"all_to_none": {"compute_slowdown": 1.0, "comm_slowdown": 1.0}}
    with pytest.raises(Exception, match="overlap.by_collective.all_to_none"):
        parse_hardware(d)


def test_checkpoint_recompute_stops_before_the_last_matmul(cm):
    # multiply-adds per token: qkv 64 x 192, dense 64 x 64, fc1 64 x 256, fc2 256 x 64, causal
    # attention 128 x 64 = 57,344, of which fc2's 16,384 (2/7) are not recomputed
    assert cm.recompute_fraction() == pytest.approx(5 / 7)


def test_checkpoint_recomputes_forward_and_its_tp_comm(cm):
    fwd, bwd = 1e-3 + 6e-7 * 512, 2e-3 + 1.2e-6 * 512
    act = 4 * 128 * 64 * 2
    ar_bf16, ar_fp32 = 1e-5 + act / 100e9, 1e-5 + 2 * act / 100e9
    tp_fwd, tp_bwd = 2 * ar_bf16, 2 * ar_fp32
    # dp group: ranks 0 and 2 (stride 2) share a node
    ar = 1e-5 + 2 * (1 / 2) * (4 * 25000) / 100e9
    t = cm.layer_time(ddp(2, checkpoint=True), 4, 8)
    window = bwd + 5 / 7 * fwd
    # the recompute repeats the attention's output all-reduce, not the MLP's
    assert t.per_mb == pytest.approx(fwd + tp_fwd + window + tp_bwd + ar_bf16)
    step = 1e-10 * 25000
    assert 1.25 * ar < 1.1 * window
    assert t.per_iter == pytest.approx(1.25 * ar * (1 - 1 / 1.1) + step + step * 16 / 28)
    # sp: both gathers and the attention's reduce-scatter are repeated
    ag_fp32, rs_bf16 = 1e-5 + act / 100e9, 1e-5 + act / 2 / 100e9
    t_sp = cm.layer_time(ddp(2, sp=True, checkpoint=True), 4, 8)
    t_sp_plain = cm.layer_time(ddp(2, sp=True), 4, 8)
    fwd_sp = 1e-3 + 5e-7 * 512
    assert t_sp.per_mb - t_sp_plain.per_mb == pytest.approx(5 / 7 * fwd_sp + 2 * ag_fp32 + rs_bf16)


def test_measured_recompute_share_replaces_the_estimate():
    """A profile that timed the checkpointed backward gives the recompute's share of the forward;
    a ZeRO unit uses its own table's, degrees without one the nearest measured below."""
    d = model_dict()
    d["layer"]["recompute_fraction"] = {"tp1": 0.9}
    d["layer"]["sharded"] = {"time": {"tp1": {"fwd": fit(1e-3, 1e-6), "bwd": fit(2e-3, 2e-6)}},
                             "recompute_fraction": {"tp1": 0.8},
                             "activation_bytes_per_token": {"tp1": 1700.0}, "checkpoint_bytes_per_token": {"tp1": 130.0}}
    hw = parse_hardware(hardware_dict())
    c = CostModel(CFG, parse_model(d), Network(hw, num_gpus=8, gpus_per_node=4), replicated_autocast=True)
    fwd = 1e-3 + 1e-6 * 256
    for strategy, share in ((ddp(), 0.9), (ddp(dp_type="zero3"), 0.8), (ddp(2, sp=True), 0.9)):
        plain = c.layer_time(strategy, 4, 8)
        ckpt = c.layer_time(dataclasses.replace(strategy, checkpoint=True), 4, 8)
        assert c.recompute_share(strategy, 4 // strategy.tp) == pytest.approx(share)
        if strategy.tp == 1:
            # one GPU's worth of recompute on the critical path (the all-reduce stays hidden)
            assert ckpt.compute - plain.compute == pytest.approx(share * fwd)
    d["layer"]["recompute_fraction"]["tp1"] = -0.1
    with pytest.raises(Exception, match="recompute_fraction"):
        parse_model(d)


def test_relayout_and_p2p(cm):
    full = 8 * 128 * 64 * 2
    # the residual stream is re-laid out as it is, fp32 after a replicated unit
    assert cm.relayout(4, 8) == pytest.approx(2 * (1e-5 + 3 / 4 * 2 * full / 100e9))  # whole stage: a bound
    assert cm.relayout(4, 8, Layout(2, True, False), Layout(2, True, False)) == 0.0
    # sp on/off inside the same TP pairs moves half blocks within the pair only
    assert cm.relayout(4, 8, Layout(2, True, True), Layout(2, True, False)) == pytest.approx(
        (1e-5 + 1 / 2 * (2 * 2 * full / 4) / 100e9) + (1e-5 + 1 / 2 * (2 * 2 * full / 2) / 100e9))
    # pipeline sends are cast to bf16
    assert cm.p2p(2, 4, 8) == pytest.approx(1e-5 + full / 4 / 25e9)


def test_optimizer_step(cm):
    assert cm.optimizer_step(1e6) == pytest.approx(1e-4)


# ------------------------------------------------------------------ memory

def test_model_states_per_dp_type():
    assert model_state_bytes(1000, 4, "ddp") == 16000
    # fp32 + Adam shards (12/4), bf16 weights kept from forward to backward (2), unsharded fp32
    # gradient accumulated over micro-batches (4)
    assert model_state_bytes(1000, 4, "zero2") == 3000 + 2000 + 4000
    assert model_state_bytes(1000, 4, "zero3") == 16000 / 4
    # a ZeRO unit with one data-parallel rank is replicated by the runtime
    assert model_state_bytes(1000, 1, "zero3") == 16000
    assert model_state_bytes(1000, 1, "zero2") == 16000


def test_layer_memory(cm):
    # replicated (autocast): the profile's bytes per token, plus the bf16 weight copies (2 B per
    # parameter: this profile has no activation_constant_bytes); the backward adds the fp32
    # residual gradient (4 x 64) and the bf16 gradient of the FFN activation (2 x 256) per token
    m = cm.layer_memory(ddp(), 4, 8)
    assert (m.states, m.activation, m.transient) == (16 * 50000, 2000 * 256 + 2 * 50000, (256 + 512) * 256)
    # ZeRO-3 (FSDP: bf16, no autocast): two norms save 2 x 64 bytes per token less each, no weight
    # copies; a bf16 residual gradient; the weights gathered again for the backward
    m = cm.layer_memory(ddp(dp_type="zero3"), 4, 8)
    assert (m.states, m.activation, m.transient) == (16 * 50000 / 4, (2000 - 4 * 64) * 256,
                                                     (128 + 512) * 256 + 2 * 50000)
    m = cm.layer_memory(ddp(dp_type="zero2"), 4, 8)
    assert (m.states, m.activation, m.transient) == (50000 * (12 / 4 + 6), (2000 - 4 * 64) * 256, (128 + 512) * 256)
    # tp2 + sp, checkpointed, replicated (dp 2, 512 tokens): keeps its input; rebuilds everything,
    # weight copies of its 25,000 parameters included; sequence-sharded residual gradient
    m = cm.layer_memory(ddp(2, sp=True, checkpoint=True), 4, 8)
    full = 800 * 512 + 2 * 25000
    assert (m.states, m.activation, m.transient) == (16 * 25000, 64 * 512, full + (4 * 32 + 2 * 128) * 512)
    assert m.persistent(InFlight(3, 3)) == 16 * 25000 + 3 * 64 * 512
    # the same as a ZeRO-2 unit: a bf16 input (half) and the norms' saving on seq/2 tokens
    m = cm.layer_memory(ddp(2, sp=True, checkpoint=True, dp_type="zero2"), 4, 8)
    assert m.activation == 32 * 512
    assert m.transient == (800 - 4 * 64 / 2) * 512 + (2 * 32 + 2 * 128) * 512


def test_backward_work_of_a_gated_mlp():
    llama = GPTConfig(family="llama", num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=4,
                      ffn_hidden_size=256, vocab_size=1000, seq_length=128)
    hw = parse_hardware(hardware_dict())
    c = CostModel(llama, parse_model(model_dict(llama)), Network(hw, num_gpus=8, gpus_per_node=4),
                  replicated_autocast=True)
    # gate and up come out of one matmul: a 2 x 256 wide bf16 gradient
    assert c.backward_work_per_token(ddp(), 4) == 4 * 64 + 2 * 512
    assert c.backward_work_per_token(ddp(2, dp_type="zero3"), 2) == 2 * 64 + 2 * 256


def test_micro_batches_in_flight():
    assert [microbatches_in_flight("gpipe", 8, 4, s) for s in range(4)] == [8, 8, 8, 8]
    assert [microbatches_in_flight("1f1b", 8, 4, s) for s in range(4)] == [4, 3, 2, 1]
    assert [microbatches_in_flight("1f1b", 2, 4, s) for s in range(4)] == [2, 2, 2, 1]
    assert microbatches_in_flight("1f1b", 8, 1, 0) == 1
    # alive when a later backward starts: GPipe one fewer each time, 1F1B as many while forwards
    # remain, none when there is a single micro-batch
    assert [in_flight("gpipe", 8, 4, s) for s in range(2)] == [(8, 7), (8, 7)]
    assert [in_flight("1f1b", 8, 4, s) for s in range(4)] == [(4, 4), (3, 3), (2, 2), (1, 1)]
    assert [in_flight("1f1b", 2, 4, s) for s in range(4)] == [(2, 1), (2, 1), (2, 1), (1, 1)]
    assert in_flight("1f1b", 8, 1, 0) == (1, 1) and in_flight("1f1b", 1, 1, 0) == (1, 0)


def test_zero_gradients_appear_in_the_first_backward(cm):
    # 50,000 parameters per layer, dp 4, 256 tokens of (2000 - 4 x 64) bytes each saved
    act = (2000 - 4 * 64) * 256
    z3, z2, rep = (cm.layer_memory(ddp(dp_type=t), 4, 8) for t in ("zero3", "zero2", "ddp"))
    assert (z3.lazy, z3.settled) == (4 * 50000 / 4, 4 * 50000 / 4)
    assert (z2.lazy, z2.settled) == (4 * 50000, 4 * 50000 / 4)
    assert (rep.lazy, rep.settled) == (0, 0)
    # one micro-batch: the first backward starts without the gradient (shard); the alternative,
    # its end, holds the shard but no activation
    assert z3.persistent(InFlight(1, 0)) == max(z3.states - 50000 + act, z3.states)
    assert z2.persistent(InFlight(1, 0)) == max(z2.states - 200000 + act, z2.states - 200000 + 50000)
    # accumulation: the second backward starts with the gradient and one micro-batch alive
    assert z3.persistent(InFlight(1, 1)) == z3.states + act
    assert z2.persistent(InFlight(1, 1)) == z2.states + act
    # GPipe with 4 micro-batches: all four alive without gradients, or three with them
    assert z2.persistent(InFlight(4, 3)) == max(z2.states - 200000 + 4 * act, z2.states + 3 * act)
    assert rep.persistent(InFlight(1, 0)) == rep.states + rep.activation


POSITIONS = 128 * 64  # gpt2's learned position embeddings, on the first stage


def test_vocab_memory_copies_and_logits(cm):
    v = VocabStrategy(tp=1)
    assert [cm.vocab_copies(1, 0), cm.vocab_copies(2, 0), cm.vocab_copies(2, 1), cm.vocab_copies(3, 1)] == [1, 1, 1, 0]
    # last stage, 256 tokens per rank: the profile's bytes per token and the head weight's bf16 copy;
    # at the start of the backward the logits' bf16 gradient (2 x 1000 per token) and the head's
    # bf16 weight gradient
    _, m = cm.vocab(v, 4, 8, 2, 1)
    assert (m.states, m.activation, m.transient) == (16 * 64000, 4000 * 256 + 2 * 64000,
                                                     2 * 1000 * 256 + 2 * 64000)
    _, m = cm.vocab(v, 4, 8, 2, 0)
    assert (m.states, m.activation, m.transient) == (16 * (64000 + POSITIONS), 0, 0)
    # one stage, tp2 ZeRO-3 (FSDP, 512 tokens): the final norm saves 2 x 64 bytes per token less,
    # no weight copy; the shard's weights are gathered again for the backward
    _, m = cm.vocab(VocabStrategy(tp=2, dp_type="zero3"), 4, 8, 1, 0)
    assert (m.states, m.activation, m.transient) == (16 * (32000 + POSITIONS) / 2, (2000 - 2 * 64) * 512,
                                                     2 * 500 * 512 + 2 * 32000 + 2 * 32000)


def test_vocab_time_on_the_last_stage(cm):
    fwd, bwd = 5e-4 + 1e-7 * 256, 1e-3 + 2e-7 * 256
    ar = 1e-5 + 2 * 3 / 4 * (4 * 64000) / 100e9
    # the two embedding copies' gradients: an all-reduce between rank 0 and rank 4, across nodes
    tied = 2e-5 + 2 * (1 / 2) * (4 * 64000) / 10e9
    t, _ = cm.vocab(VocabStrategy(tp=1), 4, 8, 2, 1)
    assert t.per_mb == pytest.approx(fwd + bwd)
    step = 1e-10 * 64000
    assert t.per_iter == pytest.approx(1.25 * ar * (1 - 1 / 1.1) + tied + step + step * 16 / 28)
    # first stage: the embedding's backward ends the stage's backward, its all-reduce is exposed
    t, _ = cm.vocab(VocabStrategy(tp=1), 4, 8, 2, 0)
    ar0 = 1e-5 + 2 * 3 / 4 * (4 * (64000 + POSITIONS)) / 100e9
    assert t.per_mb == 0.0
    step0 = 1e-10 * (64000 + POSITIONS)
    assert t.per_iter == pytest.approx(ar0 + tied + step0 + step0 * 16 / 28)


def test_vocab_tensor_parallel_communication(cm):
    # tp2, one stage of 4 ranks: 4 samples = 512 tokens per rank; the embedding's output and the
    # final norm's are fp32 under autocast
    fp32 = 4 * 128 * 64 * 4
    ar = 1e-5 + 2 * (1 / 2) * fp32 / 100e9
    loss = (1e-5 + 512 * 4 / 100e9) + (1e-5 + 2 * 512 * 4 / 100e9)  # max; sum-exp with target logit
    fwd, bwd = 5e-4 + 0.5e-7 * 512, 1e-3 + 1e-7 * 512  # tp2 scaled from the tp1 profile
    t, _ = cm.vocab(VocabStrategy(tp=2), 4, 8, 1, 0)
    assert t.per_mb == pytest.approx(ar + fwd + bwd + ar + loss)


def test_sharded_vocab_gathers_per_forward_call(cm):
    # one stage holds both ends; tp1 ZeRO-3 over 4 ranks, 256 tokens
    fwd, bwd = 5e-4 + 1e-7 * 256, 1e-3 + 2e-7 * 256
    params = 64000 + POSITIONS
    ag = 1e-5 + 3 / 4 * (2 * params) / 100e9
    rs = 1e-5 + 3 / 4 * (4 * params) / 100e9
    t, _ = cm.vocab(VocabStrategy(tp=1, dp_type="zero3"), 4, 8, 1, 0)
    # embedding and head each gather in the forward; the head's backward gathers and reduce-scatters
    # beside its compute; the embedding's backward, the last of the stage, does both exposed
    assert 1.25 * (ag + rs) < 1.1 * bwd
    # and FSDP2's memory passes at 1e-10 s per 28 bytes: each of the 4 gathers copies in 10 B per
    # local parameter (a quarter) and out 4 B per parameter; each of the 2 reduce-scatters 6 B in
    passes = 1e-10 * params * (4 * (10 / 4 + 4) + 2 * 6) / 28
    assert t.per_mb == pytest.approx(fwd + bwd + 2 * ag + 1.25 * (ag + rs) * (1 - 1 / 1.1) + ag + rs + passes)
    t, _ = cm.vocab(VocabStrategy(tp=1, dp_type="zero2"), 4, 8, 1, 0)
    # ZeRO-2: one forward gather, one more after the head's backward resharded; reduce-scatters on
    # the last micro-batch (the head's hidden, the embedding's exposed); the 2 gathers' passes and
    # the fp32 accumulation (10 B) every micro-batch, taken back per iteration, where the 2
    # reduce-scatters copy in
    gathers, accumulate = 1e-10 * params * 2 * (10 / 4 + 4) / 28, 1e-10 * params * 10 / 28
    assert t.per_mb == pytest.approx(fwd + bwd + 2 * ag + gathers + accumulate)
    step = 1e-10 * params / 4
    assert t.per_iter == pytest.approx(1.25 * rs * (1 - 1 / 1.1) + rs + step + step * 12 / 28
                                       + 1e-10 * params * 2 * 6 / 28 - accumulate)


def test_allocator_overhead(cm):
    assert cm.reserved(1e9) == pytest.approx(1.25e9 + 1e9)
    assert cm.allocatable(2.25e9) == pytest.approx(1e9)


# ------------------------------------------------------------------ whole plans

def test_gradient_shards_reserve_their_own_pool(cm):
    """FSDP2 writes a ZeRO unit's fp32 gradient shard on its reduce-scatter stream, whose pool the
    compute stream never reuses: reserved = 1.25 x (the compute stream's peak) + the shards + 1 GB.
    Checked on whole plans of four layers on 4 ranks, one micro-batch and two."""
    shard = 4 * 50000 / 4
    for dp_type in ("zero3", "zero2"):
        for chunks in (1, 2):
            plan = Plan(world_size=4, pp_deg=1, pp_division=[4], global_bsz=8 * chunks, chunks=chunks,
                        layers=[ddp(dp_type=dp_type)] * 4, vocab=VocabStrategy(), pipeline_type="1f1b")
            pred = cm.evaluate(plan)
            m = cm.layer_memory(ddp(dp_type=dp_type), 4, 8)
            flight = InFlight(1, chunks - 1)
            # the compute stream holds everything the allocated peak counts but the shards: a
            # ZeRO-3 unit's from its first backward, a ZeRO-2 unit's only after its last one
            lazy_on_compute = 0 if dp_type == "zero3" else m.lazy
            on_compute = max(m.states - m.lazy + m.activation,
                             m.states - m.lazy + lazy_on_compute + (m.activation if chunks > 1 else 0))
            vocab = pred.stage_allocated[0] - 4 * m.persistent(flight)
            assert pred.stage_reserved[0] == pytest.approx(1.25 * (4 * on_compute + vocab) + 4 * shard + 1e9)
    rep = cm.evaluate(Plan(world_size=4, pp_deg=1, pp_division=[4], global_bsz=8, chunks=1, layers=[ddp()] * 4,
                           vocab=VocabStrategy(), pipeline_type="1f1b"))
    assert rep.stage_reserved[0] == pytest.approx(1.25 * rep.stage_allocated[0] + 1e9)


def test_pipeline_iteration_time():
    assert pipeline_iteration_time([1.0, 2.0], [0.5, 0.1], chunks=4) == pytest.approx((4 + 2 - 1) * 2.0 + 0.5)


def test_evaluate_two_stage_plan_by_hand(cm):
    layer = LayerStrategy()
    plan = Plan(world_size=8, pp_deg=2, pp_division=[2, 2], global_bsz=32, chunks=4, layers=[layer] * 4,
                vocab=VocabStrategy(), pipeline_type="1f1b")
    fwd, bwd = 1e-3 + 256e-6, 2e-3 + 512e-6
    passes = 1 + 16 / 28  # optimizer step + clip + zeroing, per parameter, replicated
    layer_iter = 1.25 * (1e-5 + 1.5 * 2e5 / 1e11) * (1 - 1 / 1.1) + 5e-6 * passes
    p2p = 1e-5 + 8 * 128 * 64 * 2 / 4 / 25e9
    vfwd, vbwd = 5e-4 + 1e-7 * 256, 1e-3 + 2e-7 * 256
    first = 64000 + POSITIONS
    var0, var1 = 1e-5 + 1.5 * 4 * first / 1e11, 1e-5 + 1.5 * 256000 / 1e11
    tied = 2e-5 + 256000 / 10e9
    per_mb = [2 * (fwd + bwd) + p2p, 2 * (fwd + bwd) + p2p + vfwd + vbwd]
    per_iter = [2 * layer_iter + var0 + tied + 1e-10 * first * passes,
                2 * layer_iter + 1.25 * var1 * (1 - 1 / 1.1) + tied + 6.4e-6 * passes]
    pred = cm.evaluate(plan)
    assert pred.stage_per_mb == pytest.approx(per_mb)
    assert pred.stage_per_iter == pytest.approx(per_iter)
    assert pred.iter_time_s == pytest.approx(5 * max(per_mb) + max(per_iter))
    assert pred.tokens_per_s == pytest.approx(32 * 128 / pred.iter_time_s)
    # stage 0 holds 2 micro-batches of activations (with the weights' bf16 copies), stage 1 one
    # plus the logits; the peak adds the largest transient: a layer's backward buffers on stage 0,
    # the logits' gradient on stage 1
    act = 2000 * 256 + 2 * 50000
    alloc = [2 * 16 * 50000 + 2 * 2 * act + 16 * first + 768 * 256,
             2 * 16 * 50000 + 2 * act + 16 * 64000 + 4000 * 256 + 2 * 64000 + 2 * 1000 * 256 + 2 * 64000]
    assert pred.stage_allocated == pytest.approx(alloc)
    assert pred.stage_reserved == pytest.approx([1.25 * a + 1e9 for a in alloc])


def test_evaluate_prices_relayout_between_different_layers(cm):
    a, b = LayerStrategy(tp=1), LayerStrategy(tp=2)
    base = Plan(world_size=4, pp_deg=1, pp_division=[2], global_bsz=8, chunks=1, layers=[a, a])
    mixed = Plan(world_size=4, pp_deg=1, pp_division=[2], global_bsz=8, chunks=1, layers=[a, b])
    fp32 = 8 * 128 * 64 * 4
    # tp1 <-> tp2 (consecutive) exchanges within pairs of ranks: one direction gathers the four
    # quarter blocks two at a time, the other the two half blocks two at a time
    hop = (1e-5 + 1 / 2 * (2 * fp32 / 4) / 100e9) + (1e-5 + 1 / 2 * (2 * fp32 / 2) / 100e9)
    assert cm.relayout(4, 8, Layout(1, True, False), Layout(2, True, False)) == pytest.approx(hop)
    # b differs from a and from the vocab layout (tp1) on its way into the head: two re-layouts
    got = cm.stage_costs(mixed, 0)[0] - cm.stage_costs(base, 0)[0]
    t_a, t_b = cm.layer_time(a, 4, 8), cm.layer_time(b, 4, 8)
    assert got == pytest.approx(t_b.per_mb - t_a.per_mb + 2 * hop)


# ------------------------------------------------------------------ optional profile tables

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
    return CostModel(CFG, parse_model(d), Network(hw, num_gpus=8, gpus_per_node=4), replicated_autocast=True)


def test_measured_tables_replace_the_derived_terms(cm_full):
    # replicated: the measured weight copies instead of 2 B per parameter
    assert cm_full.layer_memory(ddp(), 4, 8).activation == 2000 * 256 + 90000
    # FSDP units: the bf16 measurements, time included
    m = cm_full.layer_memory(ddp(dp_type="zero3"), 4, 8)
    assert m.activation == 1700 * 256
    assert cm_full.layer_memory(ddp(dp_type="zero3", checkpoint=True), 4, 8).activation == 130 * 256
    assert cm_full.layer_compute(ddp(dp_type="zero2"), 4, 8) == pytest.approx((1e-3 + 9e-7 * 256, 2e-3 + 1.8e-6 * 256))
    assert cm_full.layer_compute(ddp(), 4, 8) == pytest.approx((1e-3 + 256e-6, 2e-3 + 512e-6))
    # a ZeRO type with one data-parallel rank runs replicated: the autocast tables
    assert cm_full.layer_compute(ddp(4, dp_type="zero3"), 4, 8) == cm_full.layer_compute(ddp(4), 4, 8)
    _, vm = cm_full.vocab(VocabStrategy(tp=1), 4, 8, 2, 1)
    assert vm.activation == 4000 * 256 + 120000
    _, vm = cm_full.vocab(VocabStrategy(tp=1, dp_type="zero3"), 4, 8, 2, 1)
    assert vm.activation == 3800 * 256


def test_embedding_time_on_the_first_stage(cm_full):
    t, _ = cm_full.vocab(VocabStrategy(tp=1), 4, 8, 2, 0)
    assert t.per_mb == pytest.approx(1e-5 + 1e-8 * 256 + 1e-4 + 2e-8 * 256)


# ------------------------------------------------------------------ bf16 compute for replicated units

def test_replicated_units_on_bf16_copies_of_fp32_masters():
    hw = parse_hardware(hardware_dict())
    bf = CostModel(CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4))
    # fp32 master + fp32 gradient + Adam m, v + the bf16 compute copy
    assert model_state_bytes(1000, 4, "ddp", compute_copy=True) == 18000
    m = bf.layer_memory(ddp(), 4, 8)
    assert m.states == 18 * 50000
    # like an FSDP unit: no per-micro-batch weight copies, bf16 norms: 2 x hidden bytes less per
    # token for each of the two norms (2 samples x 128 tokens on this rank)
    assert m.activation == pytest.approx((2000 - 2 * 2 * 64) * 256)
    # the copy is refreshed once per step: 6 of the AdamW step's 28 bytes per parameter
    t, t_autocast = bf.layer_time(ddp(), 4, 8), CostModel(
        CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4),
        replicated_autocast=True).layer_time(ddp(), 4, 8)
    assert t.per_iter - t_autocast.per_iter == pytest.approx(1e-10 * 50000 * 6 / 28)


def test_clock_scales_follow_how_busy_each_stage_is():
    # without a sustained slowdown nothing changes
    assert clock_scales([1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], 2, 1.0) == (3.0, [1.0, 1.0])
    # one stage computing all the time keeps the full slowdown
    it, scale = clock_scales([1.0], [0.1], [1.0], [0.0], [0.1], 4, 1.2)
    assert it == pytest.approx(4.1) and scale == [pytest.approx(1.0)]
    # two all-compute stages, 2 micro-batches: busy 2 of 3 slots, so the slowdown is 1 + 0.2 x 2/3
    it, scale = clock_scales([1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], 2, 1.2)
    assert scale == [pytest.approx((1 + 0.2 * 2 / 3) / 1.2)] * 2 and it == pytest.approx(3 * scale[0])
    # half of the per-micro-batch time exposed communication: compute is busy less, runs faster;
    # communication is not rescaled. Fixed point: u = c f / (c f + 0.5), f = (1 + 0.2 u) / 1.2
    it, scale = clock_scales([1.0], [0.0], [0.5], [0.0], [0.0], 1, 1.2)
    f = scale[0]
    u = 0.5 * f / (0.5 * f + 0.5)
    assert f == pytest.approx((1 + 0.2 * u) / 1.2, rel=1e-6) and it == pytest.approx(0.5 * f + 0.5, rel=1e-6)


def _random_stages(rng, pp):
    """(per_mb, per_iter, compute, busy_mb, busy_iter) of `pp` random stages, as clock_scales takes them."""
    compute = [rng.uniform(0, 1) for _ in range(pp)]
    per_mb = [c + rng.uniform(0, 1) * rng.choice([0, 0.1, 1]) for c in compute]
    busy_mb = [rng.uniform(0, m - c) for m, c in zip(per_mb, compute)]
    per_iter = [rng.uniform(0, 0.5) for _ in range(pp)]
    busy_iter = [rng.uniform(0, p) for p in per_iter]
    return per_mb, per_iter, compute, busy_mb, busy_iter


def test_clock_gain_never_exceeds_its_bound():
    """The search's bounds take clock_gain_bound off; no plan may gain more (random stages)."""
    import random
    rng = random.Random(3)
    worst = 0.0
    for _ in range(3000):
        pp, chunks, S = rng.randint(1, 8), rng.randint(1, 16), rng.uniform(1.0, 1.9)
        per_mb, per_iter, compute, busy_mb, busy_iter = _random_stages(rng, pp)
        plain = pipeline_iteration_time(per_mb, per_iter, chunks)
        it, _ = clock_scales(per_mb, per_iter, compute, busy_mb, busy_iter, chunks, S)
        gain = 1 - it / plain
        bound = clock_gain_bound(S, chunks, pp)
        assert gain <= bound + 1e-9, (pp, chunks, S, gain, bound)
        worst = max(worst, gain / bound if bound else 0)
    assert worst > 0.5  # and the bound is not loose by orders of magnitude
    assert clock_gain_bound(1.16, 8, 1) == pytest.approx(0.04)  # one stage: (S - 1) / 4


def test_measured_duty_curve_sets_the_clock_of_partly_idle_stages():
    from search.pipeline_time import slowdown_at
    # without points: the straight line from 1 (idle) to the sustained slowdown (busy)
    assert slowdown_at(0.5, 1.2) == pytest.approx(1.1) and slowdown_at(1.5, 1.2) == 1.2
    # points on the line change nothing
    line = ((0.25, 1.05), (0.5, 1.1), (0.75, 1.15))
    args = ([1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], 2)
    assert clock_scales(*args, 1.2, line)[1] == [pytest.approx(x) for x in clock_scales(*args, 1.2)[1]]
    # a GPU measured to slow down less when idle a third of the time: two stages, 2 micro-batches,
    # each busy 2 of 3 slots, run at the measured 1.08 instead of the line's 1.133
    curve = ((2 / 3, 1.08),)
    assert slowdown_at(2 / 3, 1.2, curve) == pytest.approx(1.08)
    assert slowdown_at(5 / 6, 1.2, curve) == pytest.approx(1.14)  # halfway to (1, 1.2)
    it, scale = clock_scales(*args, 1.2, curve)
    assert scale == [pytest.approx(1.08 / 1.2)] * 2 and it == pytest.approx(3 * 1.08 / 1.2)


def test_clock_gain_with_a_measured_curve_never_exceeds_its_bound():
    import random
    rng = random.Random(5)
    # the grid bound of the straight line agrees with the closed form, from above
    for S, chunks, pp in ((1.16, 8, 1), (1.3, 2, 4), (1.9, 1, 8)):
        closed = clock_gain_bound(S, chunks, pp)
        grid = clock_gain_bound(S, chunks, pp, ((0.5, 1 + (S - 1) / 2),))
        assert closed <= grid + 1e-12 and grid < closed + 2e-3
    for _ in range(2000):
        pp, chunks, S = rng.randint(1, 8), rng.randint(1, 16), rng.uniform(1.0, 1.9)
        us = sorted(rng.uniform(0.05, 0.95) for _ in range(rng.randint(1, 3)))
        ss = sorted(rng.uniform(1.0, S) for _ in us)
        curve = tuple(zip(us, ss))
        per_mb, per_iter, compute, busy_mb, busy_iter = _random_stages(rng, pp)
        plain = pipeline_iteration_time(per_mb, per_iter, chunks)
        it, _ = clock_scales(per_mb, per_iter, compute, busy_mb, busy_iter, chunks, S, curve)
        assert 1 - it / plain <= clock_gain_bound(S, chunks, pp, curve) + 1e-9


def test_duty_curve_is_read_sorted_and_never_falling():
    d = model_dict()
    d["sustained"] = {"slowdown": 1.2, "duty": [[0.8, 1.25], [0.4, 1.05], [0.6, 1.01]]}
    prof = parse_model(d)
    # sorted by duty, held within [1, 1.2] and at least the point before
    assert prof.sustained_curve == ((0.4, 1.05), (0.6, 1.05), (0.8, 1.2))
    for bad in ([[1.0, 1.1]], [[0.5]], "fast", [[0.5, -1]]):
        d["sustained"] = {"slowdown": 1.2, "duty": bad}
        with pytest.raises(Exception, match="sustained.duty"):
            parse_model(d)


def test_compute_bound_is_the_models_math_per_token(cm, cm_full):
    """search/bound.py: per token, every layer's and the LM head's forward + backward slopes, and
    the embedding's where timed; the faster of the replicated and ZeRO tables counts."""
    from search.bound import compute_bound
    b = compute_bound(cm.profile, 4, 1e6)
    assert b.tokens_per_s == pytest.approx(1 / (4 * 3e-6 + 3e-7))
    assert b.mfu(1e12) == pytest.approx(b.tokens_per_s * 1e6 / 1e12) and b.mfu(None) is None
    full = compute_bound(cm_full.profile, 4, 1e6)
    assert full.layer_s_per_token == pytest.approx(2.7e-6)  # the ZeRO unit's bf16 table is faster
    assert full.tokens_per_s == pytest.approx(1 / (4 * 2.7e-6 + 3e-7 + 3e-8))
    # no plan the cost model prices beats it: data parallelism over 8 GPUs at a large batch
    plan = Plan(world_size=8, pp_deg=1, pp_division=[4], global_bsz=256, chunks=1, layers=[ddp()] * 4,
                vocab=VocabStrategy(), pipeline_type="1f1b")
    assert cm.evaluate(plan).tokens_per_s / 8 < b.tokens_per_s


def test_replicated_units_fold_each_micro_batch_gradient_into_fp32():
    """On bf16 weight copies a replicated unit folds every micro-batch's bf16 gradient into its fp32
    main gradient: 4 bytes per parameter beyond the in-place bf16 accumulation the profiled module
    did, per micro-batch, at the optimizer's 1e-10 s per 28 bytes; nothing under autocast (the
    fp32 gradient accumulates in place as profiled) or for FSDP units (priced by fsdp_passes)."""
    hw = parse_hardware(hardware_dict())
    copies = CostModel(CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4))
    autocast = CostModel(CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4),
                         replicated_autocast=True)
    fold = 1e-10 * 50000 * 4 / 28
    assert copies.fold_pass(50000, "ddp", 4) == pytest.approx(fold)
    assert autocast.fold_pass(50000, "ddp", 4) == 0.0 and copies.fold_pass(50000, "zero2", 4) == 0.0
    for s in (ddp(), ddp(dp_type="zero2")):  # zero2 on a DP group of 1 runs replicated
        t_copy, t_auto = copies.layer_time(s, 1, 2), autocast.layer_time(s, 1, 2)
        assert t_copy.per_mb - t_auto.per_mb == pytest.approx(fold)
        assert t_copy.busy_mb - t_auto.busy_mb == pytest.approx(fold)  # compute-stream work
    # the LM head's weight (64,000 parameters) folds on the last stage; the embedding does not
    v = VocabStrategy(tp=1, tp_consec=True, dp_type="ddp", sp=False)
    head = copies.vocab(v, 1, 2, 2, 1)[0].per_mb - autocast.vocab(v, 1, 2, 2, 1)[0].per_mb
    emb = copies.vocab(v, 1, 2, 2, 0)[0].per_mb - autocast.vocab(v, 1, 2, 2, 0)[0].per_mb
    assert head == pytest.approx(1e-10 * 64000 * 4 / 28) and emb == pytest.approx(0.0)
