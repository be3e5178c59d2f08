"""The cost model over whole plans and stages, against numbers worked out by hand: pipeline time,
measured tables, bf16 copies, clock scaling and the compute bound.

The profile and cluster: tests/cost_model_profile.py.
"""
import pytest

from megatron_galvatron.layout import Layout
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from megatron_galvatron.profile_format import parse_hardware, parse_model
from search.comm import Network
from search.cost_model import CostModel
from search.pipeline_time import clock_gain_bound, clock_scales, pipeline_iteration_time
from search.stage_memory import model_state_bytes
from tests.cost_model_profile import CFG, POSITIONS, ddp, hardware_dict, model_dict
from tests.cost_model_profile import cm, cm_full  # noqa: F401 (fixtures)
from tests.earlier_runtime import EarlierRuntimeCostModel


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
    t, t_autocast = bf.layer_time(ddp(), 4, 8), EarlierRuntimeCostModel(
        CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4)).layer_time(ddp(), 4, 8)
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
    autocast = EarlierRuntimeCostModel(CFG, parse_model(model_dict()), Network(hw, num_gpus=8, gpus_per_node=4))
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


def test_evaluate_uneven_micro_batches_by_hand(cm):
    """28 samples in 3 chunks over DP 4 are cut as torch.chunk cuts 7 units of 4: 12, 12, 4
    samples, so a rank runs 3, 3 and 1 samples (384, 384, 128 tokens). The largest sets the
    memory; the time sums the micro-batches' bottleneck times, fill and drain at the largest."""
    layer = LayerStrategy()
    plan = Plan(world_size=8, pp_deg=2, pp_division=[2, 2], global_bsz=28, chunks=3, layers=[layer] * 4,
                vocab=VocabStrategy(), pipeline_type="1f1b")
    assert plan.micro_batch_sizes == [12, 12, 4]

    def per_mb(tokens):
        fwd, bwd = 1e-3 + 1e-6 * tokens, 2e-3 + 2e-6 * tokens
        p2p = 1e-5 + tokens * 64 * 2 / 25e9
        vfwd, vbwd = 5e-4 + 1e-7 * tokens, 1e-3 + 2e-7 * tokens
        return [2 * (fwd + bwd) + p2p, 2 * (fwd + bwd) + p2p + vfwd + vbwd]

    passes = 1 + 16 / 28
    layer_iter = 1.25 * (1e-5 + 1.5 * 2e5 / 1e11) * (1 - 1 / 1.1) + 5e-6 * passes
    first = 64000 + POSITIONS
    var0, var1 = 1e-5 + 1.5 * 4 * first / 1e11, 1e-5 + 1.5 * 256000 / 1e11
    tied = 2e-5 + 256000 / 10e9
    per_iter = [2 * layer_iter + var0 + tied + 1e-10 * first * passes,
                2 * layer_iter + 1.25 * var1 * (1 - 1 / 1.1) + tied + 6.4e-6 * passes]
    big, small = per_mb(384), per_mb(128)
    pred = cm.evaluate(plan)
    assert pred.stage_per_mb == pytest.approx(big)
    # two large and one small micro-batch through the bottleneck, plus one stage of fill/drain
    assert pred.iter_time_s == pytest.approx(2 * max(big) + max(small) + 1 * max(big) + max(per_iter))
    assert pred.tokens_per_s == pytest.approx(28 * 128 / pred.iter_time_s)
    # memory: as the even 36-in-3 plan (three micro-batches of 12), stage 0 holding 2 of them
    act = 2000 * 384 + 2 * 50000
    alloc = [2 * 16 * 50000 + 2 * 2 * act + 16 * first + 768 * 384,
             2 * 16 * 50000 + 2 * act + 16 * 64000 + 4000 * 384 + 2 * 64000 + 2 * 1000 * 384 + 2 * 64000]
    assert pred.stage_allocated == pytest.approx(alloc)
