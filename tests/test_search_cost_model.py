"""Every cost-model term against numbers worked out by hand: communication, compute,
checkpointing, re-layout and the optimizer.

The profile and cluster: tests/cost_model_profile.py.
"""
import dataclasses

import pytest

from megatron_galvatron.layout import Layout
from megatron_galvatron.profile_format import parse_hardware, parse_model
from search.comm import Network
from tests.cost_model_profile import CFG, ddp, fit, hardware_dict, model_dict
from tests.cost_model_profile import cm  # noqa: F401 (fixtures)
from tests.earlier_runtime import EarlierRuntimeCostModel


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
    cm.prefetch = False  # nothing to hide behind without the prefetch
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


def test_zero3_tensorwise_fp8_gathers_its_linear_weights_in_one_byte(cm):
    """A zero3 layer whose linears cast tensorwise all-gathers their weights as float8 (1 byte,
    fp8/fsdp_gather.py): the weights' share of each gather's bytes and bandwidth time is half of
    bf16's, its norms' and biases' unchanged; rowwise and zero2 float8 layers gather bf16."""
    linear = CFG.linear_weight_count()  # 49,152 of the profile's 50,000 parameters per layer
    zero3 = ddp(dp_type="zero3")
    tensorwise, rowwise = ddp(dp_type="zero3", fp8="tensorwise"), ddp(dp_type="zero3", fp8="rowwise")
    bf16 = 2 * 50000
    assert cm.gathered_bytes(zero3, 50000) == cm.gathered_bytes(rowwise, 50000) == bf16
    assert cm.gathered_bytes(ddp(dp_type="zero2", fp8="tensorwise"), 50000) == bf16
    fp8 = cm.gathered_bytes(tensorwise, 50000)
    assert fp8 == 2 * (50000 - linear) + 1 * linear and bf16 - fp8 == linear  # 2 bytes -> 1 per weight
    assert cm.gathered_bytes(ddp(2, dp_type="zero3", fp8="tensorwise"), 25000) == 2 * 25000 - linear / 2
    fwd, bwd = 1e-3 + 256e-6, 2e-3 + 512e-6
    rs = 1e-5 + 3 / 4 * (4 * 50000) / 100e9
    for s, nbytes in ((zero3, bf16), (rowwise, bf16), (tensorwise, fp8)):
        ag = 1e-5 + 3 / 4 * nbytes / 100e9  # dp 4 within a node
        f_extra, b_extra, _ = cm._dp_sync("zero3", 50000, 4, s, fwd, bwd)
        assert f_extra == pytest.approx(1.25 * ag * (1 - 1 / 1.1))
        assert b_extra == pytest.approx(1.25 * (ag + rs) * (1 - 1 / 1.1))


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
    c = EarlierRuntimeCostModel(CFG, parse_model(model_dict()), net)
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
    c = EarlierRuntimeCostModel(CFG, parse_model(d), Network(hw, num_gpus=8, gpus_per_node=4))
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
