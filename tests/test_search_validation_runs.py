"""The cost model against the later GPU runs in results/ (the numbers that docs/log.md quotes),
recomputed from copies of their benchmark JSONs and profiles under tests/fixtures/results/.

Plans run with torch.compile are left out (the profiles time eager layers), as in
tools/plot_validation.py, whose pricing this uses.
"""
import os

import pytest

from megatron_galvatron.benchmark.runner import Result, per_round
from tools.plot_validation import rows_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "tests", "fixtures", "results")


def rows(bench: str, prof: str, compiled_prof: str = None):
    """The benchmark JSON and its plans priced: eager ones on `prof`, compiled ones on
    `compiled_prof` (left out without it); paths under tests/fixtures/results."""
    import json
    with open(os.path.join(RESULTS, bench)) as f:
        b = json.load(f)
    return b, rows_of(b, os.path.join(RESULTS, prof), compiled_prof and os.path.join(RESULTS, compiled_prof))


def errors(rs):
    return ([r["pred_time"] / r["time"] - 1 for r in rs], [r["pred_mem"] / r["mem"] - 1 for r in rs])


def test_h100_eight_plans_within_five_percent_and_the_searched_plan_is_fastest():
    """Every plan over-predicted since the replicated units' gradient fold is priced (within 1.5 %
    before, +0.3 to +4.8 % now): the H100 set shows none of the fold's cost that the H200 runs do."""
    bench, rs = rows("h100x1_gpt3b/validation/bench.json", "h100x1_gpt3b/profile")
    assert len(rs) == 8
    t, m = errors(rs)
    assert min(t) > 0 and max(t) < 0.049 and max(map(abs, m)) < 0.013
    assert sum(map(abs, t)) / 8 == pytest.approx(0.0295, abs=0.0005)
    assert sum(map(abs, m)) / 8 == pytest.approx(0.005, abs=0.0005)
    best = max(bench["results"], key=lambda r: r["tokens_per_s_per_gpu"])
    assert best["name"] == "plan.json"  # oracle gap 0


# (name, error in time, error in memory) with the 60 s sustained measurement, the slowdown scaled by
# how busy each plan keeps the GPUs, as the document prints them
H200_1P4B = [("plan.json", -0.008, 0.002), ("tp=1,dp=ddp,gbs=32,chunks=1", -0.012, 0.002),
             ("tp=1,dp=zero2,gbs=32,chunks=2", -0.021, 0.003), ("tp=1,dp=zero3,gbs=32,chunks=1", -0.017, 0.005),
             ("tp=1,dp=zero3,ckpt=1,gbs=64,chunks=1", -0.0405, 0.012),
             ("tp=2,dp=ddp,sp=1,gbs=16,chunks=1", 0.0335, 0.001), ("pp=2,dp=ddp,gbs=32,chunks=4", 0.040, -0.003),
             ("pp=2,dp=ddp,gbs=32,chunks=8,sched=gpipe", 0.041, 0.002),
             ("tp=1,dp=zero2,gbs=48,chunks=1", -0.019, 0.006)]


def test_h200_gpt1p4b_with_the_settled_sustained_slowdown():
    _, rs = rows("h200x2_gpt1p4b/validation_sustained_profile/bench.json", "h200x2_gpt1p4b/profile_sustained_60s")
    t, m = errors(rs)
    for r, e_t, e_m, (name, want_t, want_m) in zip(rs, t, m, H200_1P4B):
        assert r["name"] == name
        assert e_t == pytest.approx(want_t, abs=0.0006) and e_m == pytest.approx(want_m, abs=0.0006)
    assert sum(map(abs, t)) / len(t) == pytest.approx(0.026, abs=0.0005)
    assert max(map(abs, t)) < 0.05 and max(map(abs, m)) < 0.05  # every plan within 5 % on both


def test_h200_llama7b_memory_holds_and_time_misses_where_the_allocator_retried():
    """Allocated memory within 1 % for every eager plan of every 7B run. Time: the plans near the
    card's capacity (124 GB allocated) retried cudaMalloc and ran 9-22 % over the prediction;
    the ones the search picks with 6-14 GB more headroom are within 5 %, eager and compiled (the
    compiled ones priced on the compiled profile, whose memory is counted on the eager layer)."""
    for run in ("search_132gb/bench.json", "vs_baselines_compiled/bench.json", "vs_baselines_rounds/bench.json",
                "three_searches_vs_baselines/bench.json"):
        bench, rs = rows("h200x2_llama7b/" + run, "h200x2_llama7b/profile_sustained_60s")
        t, m = errors(rs)
        assert max(map(abs, m)) < 0.01, run
    bench, rs = rows("h200x2_llama7b/three_searches_vs_baselines/bench.json", "h200x2_llama7b/profile_sustained_60s",
                     "h200x2_llama7b/profile_compiled_mb4_8")
    t, m = errors(rs)
    by = {r["name"]: (e, em) for r, e, em in zip(rs, t, m)}
    retries = {r["name"]: r["alloc_retries"] for r in bench["results"]}
    assert retries["plan.json"] > 0 and by["plan.json"][0] < -0.15
    want = {"plan_126gb.json": (0.004, 0.000), "plan_126gb.json +compile": (-0.016, 0.048),
            "plan_120gb.json": (-0.006, -0.000), "plan_120gb.json +compile": (-0.014, 0.049)}
    for name, (wt, wm) in want.items():
        assert retries[name] == 0
        assert by[name][0] == pytest.approx(wt, abs=0.0006) and by[name][1] == pytest.approx(wm, abs=0.0006)


def test_h200_gpt1p4b_compiled_plans_on_the_compiled_profile():
    for run, n in (("1round", 4), ("2rounds", 2)):
        _, rs = rows(f"h200x2_gpt1p4b/compiled_vs_baselines_{run}/bench.json", "h200x2_gpt1p4b/profile_sustained_60s",
                     "h200x2_gpt1p4b/profile_compiled_mb8_16")
        t, m = errors(rs)
        assert len(rs) == n and max(map(abs, t)) < 0.035 and max(map(abs, m)) < 0.01


def test_h200_gpt1p4b_ten_plans_on_the_shared_stream_runtime():
    """The third set: the eight hand-picked plans, the earlier searched plan and the plan searched
    on compiled layers profiled at micro-batches 16 and 32, on the runtime whose FSDP units share
    one set of streams. Time within 5 % for all 10 (the ZeRO-3 checkpointed plan -4.6 %; -5.2 %
    before FSDP2's copy-in passes were priced), allocated memory within 1 %, reserved memory
    over-predicted by 2.5-4 %, never under."""
    d = "h200x2_gpt1p4b/"
    _, rs = rows(d + "validation_shared_streams/bench.json", d + "profile_sustained_60s", d + "profile_compiled_mb16_32")
    t, m = errors(rs)
    assert len(rs) == 10
    by = dict(zip([r["name"] for r in rs], t))
    assert by["plan14.json"] == pytest.approx(-0.014, abs=0.0006)
    assert by["tp=1,dp=zero3,ckpt=1,gbs=64,chunks=1"] == pytest.approx(-0.0465, abs=0.0006)
    assert max(map(abs, t)) < 0.05 and sum(map(abs, t)) / 10 == pytest.approx(0.027, abs=0.0006)
    assert max(map(abs, m)) < 0.01
    over = [r["pred_reserved"] / r["reserved"] - 1 for r in rs]
    assert min(over) > 0.02 and max(over) < 0.041


def test_h200_llama7b_compiled_memory_and_reserved_pools():
    """Counted through the compiled call, compiled layers' memory holds (it was +4.8 % counted on
    the eager layer). With one set of FSDP streams, the reserved prediction (compute-stream peak
    x ratio + gradient shards) is 2.5-3.3 % above what was measured on every plan that fitted;
    the plan that retried cudaMalloc is predicted over the card (139.8 GiB)."""
    L = "h200x2_llama7b/"
    _, rs = rows(L + "shared_fsdp_streams/bench.json", L + "profile_sustained_60s", L + "profile_compiled_memory")
    t, m = errors(rs)
    assert max(map(abs, m)) < 0.01
    for r, e in zip(rs, t):
        if r["retries"]:
            assert r["pred_reserved"] > 139.8 and e < -0.2
        else:
            assert 0.02 < r["pred_reserved"] / r["reserved"] - 1 < 0.035 and abs(e) < 0.05
    _, rs = rows(L + "shared_fsdp_streams/bench_136gb.json", L + "profile_sustained_60s", L + "profile_compiled_memory")
    (r,) = rs
    assert r["retries"] == 0 and r["pred_reserved"] < 136 and r["reserved"] < r["pred_reserved"]
    assert r["pred_time"] / r["time"] - 1 == pytest.approx(-0.016, abs=0.0006)


def test_h200_recompute_share_measured_by_the_profiler():
    """The profiler's checkpointed-backward timing gives a recompute share above the multiply-add
    estimate (attention and elementwise kernels run slower per multiply-add than the MLP's second
    matmul, which is not recomputed), and it moves both checkpointed plans' predictions closer."""
    from search.comm import Network
    from search.cost_model import CostModel
    from search.predict import predict
    from megatron_galvatron.profile_format import load_profiles
    from megatron_galvatron.model.config import GPTConfig
    from megatron_galvatron.plan import Plan
    import json
    d = os.path.join(RESULTS, "h200x2_gpt1p4b/recompute_share")
    with open(os.path.join(d, "bench.json")) as f:
        bench = json.load(f)
    hw, prof = load_profiles(os.path.join(d, "profile"))
    cfg = GPTConfig(**bench["model"])
    estimate = CostModel(cfg, prof, Network(hw, 2, 2)).recompute_fraction()
    assert estimate == pytest.approx(9 / 13)
    assert prof.recompute_fraction[(1, False)] > estimate + 0.04
    assert prof.bf16_recompute_fraction[(1, False)] > estimate + 0.02
    measured = {r["name"]: r["iter_time_s"] for r in bench["results"]}
    with_share = {r["name"]: predict(Plan.from_dict(r["plan"]), cfg, (hw, prof)).iter_time_s
                  for r in bench["results"]}
    prof.recompute_fraction, prof.bf16_recompute_fraction = {}, {}
    without = {r["name"]: predict(Plan.from_dict(r["plan"]), cfg, (hw, prof)).iter_time_s for r in bench["results"]}
    for name in ("tp=1,dp=zero3,ckpt=1,gbs=64,chunks=1", "tp=1,dp=ddp,ckpt=1,gbs=64,chunks=1"):
        assert abs(with_share[name] / measured[name] - 1) < abs(without[name] / measured[name] - 1) - 0.006
        assert abs(with_share[name] / measured[name] - 1) < 0.05
    assert with_share["tp=1,dp=zero3,gbs=32,chunks=1"] == without["tp=1,dp=zero3,gbs=32,chunks=1"]


def test_h200_gpt1p4b_fourth_set_profiled_on_the_machine_it_ran_on():
    """The fourth set (tools/gpu_validate.sh: the model profiled on the machine that then ran the
    ten plans, the search on it and on the compiled profile): every plan within 5 % on time,
    allocated memory within 1 %; the searched plan is the fastest measured and predicted within
    0.5 %. In three interleaved rounds it is >= 1.10x FSDP2 + compile in every round."""
    d = "h200x2_gpt1p4b/validation_same_machine/"
    compiled = "h200x2_gpt1p4b/profile_compiled_mb16_32"
    bench, rs = rows(d + "bench.json", d + "profile", compiled)
    t, m = errors(rs)
    assert len(rs) == 10 and max(map(abs, t)) < 0.045 and max(map(abs, m)) < 0.01
    assert sum(map(abs, t)) / 10 == pytest.approx(0.026, abs=0.0006)
    by = dict(zip([r["name"] for r in rs], t))
    assert abs(by["plan.json"]) < 0.005
    best = max(bench["results"], key=lambda r: r["tokens_per_s_per_gpu"])
    assert best["name"] == "plan.json"  # oracle gap 0, the baseline included
    import json
    with open(os.path.join(RESULTS, "h200x2_gpt1p4b/searched_plan_rounds3/rounds3.json")) as f:
        rounds = json.load(f)["results"]
    by_name = {r["name"]: r for r in rounds}
    ratios = [a / b for a, b in zip(per_round(Result.from_record(by_name["plan.json"])),
                                    per_round(Result.from_record(by_name["fsdp2+compile"])))]
    assert len(ratios) == 3 and min(ratios) > 1.10
    assert by_name["plan.json"]["tokens_per_s_per_gpu"] / by_name["fsdp2+compile"]["tokens_per_s_per_gpu"] > 1.10


def test_h200_gpt1p4b_batch_128_plan_on_a_faster_clocked_machine():
    """The plan searched with batches up to 128 (4 micro-batches of 16 per GPU, compiled DDP
    layers): >= 1.114x FSDP2 + compile and MFU >= 0.60 in every round of two runs on a machine
    whose cards held a higher clock at the power cap; the batch-64 plan in the same run 1.098x."""
    import json
    d = os.path.join(RESULTS, "h200x2_gpt1p4b/search_batch128")
    for run in ("bench.json", "rounds3.json"):
        with open(os.path.join(d, run)) as f:
            bench = json.load(f)
        seq = bench["model"]["seq_length"]
        flops = 6 * (24 * 50358272 + 50304 * 2048 + 2048 * 2048 + 2 * 2048) + 12 * 24 * 2048 * seq
        rs = bench["results"]
        ours = next(r for r in rs if r["global_batch"] == 128)
        base = next(r for r in rs if r["name"] == "fsdp2+compile")
        assert ours["mfu"] == pytest.approx(ours["tokens_per_s_per_gpu"] * flops / 989e12, rel=2e-3)
        ratios = [a / b for a, b in zip(per_round(Result.from_record(ours)), per_round(Result.from_record(base)))]
        assert min(ratios) > 1.114 and min(per_round(Result.from_record(ours))) * flops / 989e12 > 0.60
        if run == "bench.json":
            batch64 = next(r for r in rs if r["global_batch"] == 64)
            assert batch64["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"] == pytest.approx(1.0975, abs=0.001)


def test_h200x1_llama7b_ten_plans_and_the_searched_plan_against_fsdp2():
    """1x H200, LLaMA-7B (profiled, searched and run on single-GPU machines of one day): the ten
    plans within 3.2 % on time and 1.1 % on allocated memory with the replicated units' gradient
    fold priced (4 of 10 within 5 % without it: -2.5 to -6.3 %); the searched plan is the fastest
    measured, and in the run beside the baselines 1.161x FSDP2 + compile, the fastest that fits
    (DDP runs out of memory at every size)."""
    d = "h200x1_llama7b/"
    bench, rs = rows(d + "validation/bench.json", d + "profile", d + "profile_compiled")
    t, m = errors(rs)
    assert len(rs) == 10 and max(map(abs, t)) < 0.032 and max(map(abs, m)) < 0.011
    assert sum(map(abs, t)) / 10 == pytest.approx(0.022, abs=0.0005)
    assert max(bench["results"], key=lambda r: r["tokens_per_s_per_gpu"])["name"] == "plan.json"
    speed, speed_rows = rows(d + "vs_baselines/bench.json", d + "profile", d + "profile_compiled")
    by = {r["name"]: r for r in speed["results"]}
    assert by["ddp"]["status"] == "oom" and all(r["status"] == "ok" for n, r in by.items() if n != "ddp")
    best = max((r for n, r in by.items() if n != "plan.json" and r["status"] == "ok"),
               key=lambda r: r["tokens_per_s_per_gpu"])
    assert best["name"] == "fsdp2+compile"
    assert by["plan.json"]["tokens_per_s_per_gpu"] / best["tokens_per_s_per_gpu"] == pytest.approx(1.161, abs=0.001)
    # MFU: 6N + 12 L h s per token, N = 32 layers of 202,383,360 + two 32000 x 4096 matrices + final norm
    flops = 6 * (32 * 202383360 + 2 * 32000 * 4096 + 4096) + 12 * 32 * 4096 * 2048
    assert by["plan.json"]["mfu"] == pytest.approx(by["plan.json"]["tokens_per_s_per_gpu"] * flops / 989e12, rel=2e-3)
    assert speed_rows[0]["pred_time"] / speed_rows[0]["time"] - 1 == pytest.approx(-0.021, abs=0.0006)


def _with_duty_curve(prof: str, dst: str, curve_from: str) -> str:
    """A copy of the profile under tests/fixtures/results whose sustained run gets `curve_from`'s duty curve,
    scaled to this profile's own busy slowdown."""
    import json
    import shutil
    shutil.copytree(os.path.join(RESULTS, prof), dst)
    with open(os.path.join(RESULTS, curve_from, "model.json")) as f:
        src = json.load(f)["sustained"]
    path = os.path.join(dst, "model.json")
    with open(path) as f:
        model = json.load(f)
    busy = model["sustained"]["slowdown"]
    model["sustained"]["duty"] = [[u, 1 + (s - 1) * (busy - 1) / (src["slowdown"] - 1)] for u, s in src["duty"]]
    with open(path, "w") as f:
        json.dump(model, f)
    return dst


def test_the_measured_duty_curve_prices_the_tp_and_pipeline_plans(tmp_path):
    """The duty curve measured on one H200 (slowdown 1.066 at duty 0.84, 1.042 at 0.68, 1.137 busy),
    carried over to the 2x H200 GPT-1.4B sets: their TP + SP and pipeline plans, predicted 1.5-4.2 %
    slow on the straight line, fall within 3 %, and each set's time MAE drops."""
    curve = "h200x1_llama7b/profile"
    compiled = "h200x2_gpt1p4b/profile_compiled_mb16_32"
    sets = [("h200x2_gpt1p4b/validation_sustained_profile/bench.json", "h200x2_gpt1p4b/profile_sustained_60s", None, 0.026,
             0.018),
            ("h200x2_gpt1p4b/validation_shared_streams/bench.json", "h200x2_gpt1p4b/profile_sustained_60s",
             compiled, 0.027, 0.023),
            ("h200x2_gpt1p4b/validation_same_machine/bench.json", "h200x2_gpt1p4b/validation_same_machine/profile", compiled,
             0.026, 0.017)]
    idle = ("tp=2,dp=ddp,sp=1,gbs=16,chunks=1", "pp=2,dp=ddp,gbs=32,chunks=4", "pp=2,dp=ddp,gbs=32,chunks=8,sched=gpipe")
    for i, (bench, prof, cprof, mae_now, mae_curve) in enumerate(sets):
        _, now = rows(bench, prof, cprof)
        # rows() joins under tests/fixtures/results, which leaves these absolute paths as they are
        _, carried = rows(bench, _with_duty_curve(prof, str(tmp_path / f"p{i}"), curve),
                          cprof and _with_duty_curve(cprof, str(tmp_path / f"c{i}"), curve))
        t_now, t_curve = errors(now)[0], errors(carried)[0]
        by_now, by_curve = dict(zip([r["name"] for r in now], t_now)), dict(zip([r["name"] for r in carried], t_curve))
        assert all(0.014 < by_now[n] < 0.043 for n in idle) and all(abs(by_curve[n]) < 0.03 for n in idle)
        assert sum(map(abs, t_now)) / len(t_now) == pytest.approx(mae_now, abs=0.0006)
        assert sum(map(abs, t_curve)) / len(t_curve) == pytest.approx(mae_curve, abs=0.0006)


# Float8 on one H200 (results/h200x1_llama{3b,7b}/fp8_searched): twelve compiled plans, eight
# mixing float8 and bf16 layers, priced on the profile whose float8 layers have a sustained chain
# of their own; (bench, name, error in time, error in memory)
FP8_RUNS = [("llama3b", "bench_searched.json", "plan_tensorwise.json", 0.000, 0.006),
            ("llama3b", "bench_searched.json", "plan_off.json", 0.006, 0.005),
            ("llama3b", "bench_searched.json", "plan_tensorwise_90gb.json", -0.037, 0.008),
            ("llama3b", "bench_searched.json", "plan_tensorwise_70gb.json", 0.054, 0.009),
            ("llama3b", "bench_mixed.json", "tp=1,dp=ddp,gbs=16,chunks=4,fp8=tensorwise,fp8skip=2:2 +compile", 0.000, 0.006),
            ("llama3b", "bench_mixed.json", "tp=1,dp=ddp,gbs=16,chunks=8,fp8=tensorwise,fp8skip=0:14 +compile", -0.015, 0.007),
            ("llama3b", "bench_mixed.json", "tp=1,dp=zero2,gbs=16,chunks=4,fp8=tensorwise,fp8skip=4:0 +compile", -0.054, 0.006),
            ("llama3b", "bench_mixed.json", "tp=1,dp=ddp,ckpt=1,gbs=16,chunks=4,fp8=tensorwise,fp8skip=1:1 +compile", 0.002, 0.008),
            ("llama3b", "bench_mixed.json", "tp=1,dp=zero3,gbs=16,chunks=4,fp8=tensorwise,fp8skip=7:7 +compile", -0.027, 0.006),
            ("llama7b", "bench.json", "plan_tensorwise.json", -0.001, 0.001),
            ("llama7b", "bench.json", "plan_off.json", -0.007, 0.001),
            ("llama7b", "bench.json", "plan_tensorwise_skip2.json", -0.003, 0.001)]


def _fp8_rows(profile: str):
    out = []
    for model, bench in dict.fromkeys((m, b) for m, b, *_ in FP8_RUNS):
        d = f"h200x1_{model}/fp8_searched"
        out += rows(f"{d}/{bench}", f"{d}/{profile}", f"{d}/{profile}")[1]
    return out


def test_h200_fp8_plans_within_five_percent_on_the_float8_sustained_profile():
    rs = _fp8_rows("profile_fp8_sustained")
    assert [r["name"] for r in rs] == [name for _, _, name, _, _ in FP8_RUNS]
    t, m = errors(rs)
    for e_t, e_m, (_, _, name, want_t, want_m) in zip(t, m, FP8_RUNS):
        assert e_t == pytest.approx(want_t, abs=0.0006) and e_m == pytest.approx(want_m, abs=0.0006), name
    mixed = [(e_t, e_m) for r, e_t, e_m in zip(rs, t, m) if r["name"] not in ("plan_tensorwise.json", "plan_off.json")]
    assert len(mixed) == 8 and sum(abs(a) < 0.05 and abs(b) < 0.05 for a, b in mixed) == 6
    assert max(map(abs, m)) < 0.01


def test_h200_fp8_plans_were_over_predicted_without_the_float8_chain():
    """On the first profile every float8 table took the bf16 chain's slowdown (1.19 on the 3B shape,
    where the float8 chain measured 1.13): the all-float8 plans came out 2.9-4.9 % slow."""
    t_first, _ = errors(_fp8_rows("profile"))
    t_now, _ = errors(_fp8_rows("profile_fp8_sustained"))
    assert sum(map(abs, t_now)) < 0.7 * sum(map(abs, t_first))
    names = [name for _, _, name, _, _ in FP8_RUNS]
    for i in (names.index("plan_tensorwise.json"), len(names) - 3):
        assert t_first[i] > 0.028 and abs(t_now[i]) < 0.002
