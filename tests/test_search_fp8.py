"""Float8 layers in the cost model and the search: priced from the profile's layer.fp8 tables,
refused without them, chosen per layer by the DP as brute force would, the skipped end layers
kept bf16, and a searched fp8 plan trains like the reference."""
import copy
import json
import os
import subprocess
import sys

import pytest

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.plan import LayerStrategy
from megatron_galvatron.profile_format import MODEL_FILE, ProfileError, load_profiles, parse_hardware, parse_model
from search import _dp_core  # noqa: F401  (CI builds it; without it these tests would crawl)
from search import run as search_run
from search import synthetic
from search.comm import Network
from search.cost_model import CostModel
from search.engine import Searcher
from search.strategies import Space, label, layer_strategies
from tests.cost_model_profile import CFG, fit, hardware_dict, model_dict
from tests.test_search_engine import TINY, smallest_budget
from tests.test_search_engine import brute_force as engine_brute_force

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- cost model, by hand

def fp8_profile():
    """cost_model_profile's profile with bf16 tables and a tensorwise fp8 table at tp1 only."""
    d = model_dict()
    d["layer"]["bf16"] = {"time": {"tp1": {"fwd": fit(1e-3, 9e-7), "bwd": fit(2e-3, 1.8e-6)}},
                          "activation_bytes_per_token": {"tp1": 1700.0}, "checkpoint_bytes_per_token": {"tp1": 128.0},
                          "recompute_fraction": {"tp1": 0.5}}
    d["layer"]["fp8"] = {"tensorwise": {
        "time": {"tp1": {"fwd": fit(1.2e-3, 5e-7), "bwd": fit(2.5e-3, 1e-6)}},
        "activation_bytes_per_token": {"tp1": 1300.0}, "checkpoint_bytes_per_token": {"tp1": 128.0},
        "activation_constant_bytes": {"tp1": 48000.0}, "recompute_fraction": {"tp1": 0.7}}}
    return d


@pytest.fixture
def cm8():
    hw = parse_hardware(hardware_dict())
    return CostModel(CFG, parse_model(fp8_profile()), Network(hw, num_gpus=8, gpus_per_node=4))


def test_fp8_layer_is_priced_from_its_table(cm8):
    # stage of 1 rank, micro-batch 2: 2 x 128 = 256 tokens on the rank
    s = LayerStrategy(tp=1, fp8="tensorwise")
    fwd, bwd = cm8.layer_compute(s, 1, 2)
    assert fwd == pytest.approx(1.2e-3 + 5e-7 * 256) and bwd == pytest.approx(2.5e-3 + 1e-6 * 256)
    assert cm8.recompute_share(s, 1) == 0.7
    assert cm8.layer_activation(s, 1) == (1300.0, 48000.0, 128.0)
    m = cm8.layer_memory(s, 1, 2)
    assert m.activation == pytest.approx(1300.0 * 256 + 48000.0)
    ck = cm8.layer_memory(LayerStrategy(tp=1, fp8="tensorwise", checkpoint=True), 1, 2)
    assert ck.activation == pytest.approx(128.0 * 256)
    # the float8 layer's forward is rebuilt in the checkpointed backward: 0.7 of its forward
    t, t_ck = (cm8.layer_time(LayerStrategy(tp=1, fp8="tensorwise", checkpoint=c), 1, 2) for c in (False, True))
    assert t_ck.compute - t.compute == pytest.approx(0.7 * fwd)
    # fp32 masters, gradients and optimizer state do not depend on the compute precision
    assert m.states == cm8.layer_memory(LayerStrategy(tp=1), 1, 2).states
    bf = cm8.layer_compute(LayerStrategy(tp=1), 1, 2)
    assert bf == pytest.approx((1e-3 + 9e-7 * 256, 2e-3 + 1.8e-6 * 256))  # bf16 still from layer.bf16


def test_zero3_tensorwise_layer_holds_float8_weights(cm8):
    """The weights a zero3 layer gathers again for its backward are float8 when its linears cast
    tensorwise: 1 byte per linear weight element, 2 per norm/bias element, where zero2 holds none;
    and each rank keeps its shard's float8 cast (1 byte per linear weight element / dp) between
    steps beside the fp32 master shards."""
    def memory(**kw):  # stage of 4 ranks (dp 4), micro-batch 8
        return (cm8.layer_memory(LayerStrategy(tp=1, dp_type=d, **kw), 4, 8) for d in ("zero3", "zero2"))
    linear = CFG.linear_weight_count()
    (bf16, bf16_z2), (fp8, fp8_z2) = memory(), memory(fp8="tensorwise")
    assert bf16.transient - bf16_z2.transient == 2 * 50000
    assert fp8.transient - fp8_z2.transient == 2 * (50000 - linear) + linear
    assert bf16.states == 16 * 50000 / 4 and fp8.states == bf16.states + linear / 4
    assert fp8_z2.states == bf16_z2.states  # zero2 gathers bf16: no cast kept


def test_fp8_without_its_table_is_refused_not_priced_as_bf16(cm8):
    for s in (LayerStrategy(tp=2, fp8="tensorwise"), LayerStrategy(tp=1, fp8="rowwise")):
        with pytest.raises(ProfileError) as e:
            cm8.layer_compute(s, 2, 2)
        msg = str(e.value)
        assert "\n" not in msg and f"--fp8 {s.fp8}" in msg and f"layer.fp8.{s.fp8}.time.tp{s.tp}" in msg


# ---------------------------------------------------------------- search vs brute force

def with_fp8_tables(model: dict, recipe: str, time_scale: float = 0.6, act_scale: float = 0.8,
                    weight_bytes: float = 1.0) -> dict:
    """A synthetic fp8 table beside a synthetic profile's layer: faster matmuls, fewer saved bytes,
    and `weight_bytes` per local weight kept per micro-batch (the table's constant, which the
    cost model adds per micro-batch in flight)."""
    d = copy.deepcopy(model)
    layer = d["layer"]
    params = layer["memory"]["param_count"]
    tp = {k: int(k[2:].split("_")[0]) for k in layer["time"]}
    layer.setdefault("fp8", {})[recipe] = {
        "time": {k: {p: dict(v[p], per_token_s=v[p]["per_token_s"] * time_scale) for p in ("fwd", "bwd")}
                 for k, v in layer["time"].items()},
        "activation_bytes_per_token": {k: v * act_scale for k, v in layer["memory"]["activation_bytes_per_token"].items()},
        "checkpoint_bytes_per_token": dict(layer["memory"]["checkpoint_bytes_per_token"]),
        "activation_constant_bytes": {k: weight_bytes * params / tp[k] for k in layer["time"]}}
    return d


def fp8_profiles(tmp_path, cfg, num_gpus, recipe="tensorwise", **table):
    d = synthetic.write_profiles(str(tmp_path / "prof"), cfg, num_gpus, num_gpus)
    path = os.path.join(d, MODEL_FILE)
    with open(path) as f:
        model = json.load(f)
    with open(path, "w") as f:
        json.dump(with_fp8_tables(model, recipe, **table), f)
    return d


def fp8_searcher(tmp_path, budget_gb, skip=(0, 0), table=None, **space):
    hw, model = load_profiles(fp8_profiles(tmp_path, TINY, 2, **(table or {})))
    cost = CostModel(TINY, model, Network(hw, 2, 2))
    return Searcher(cost, 2, budget_gb, Space(fp8="tensorwise", **space), (4,), threads=2, fp8_skip=skip)


def brute_force(cost, budget_gb, space, skip, pps=None):
    """Best tokens/s over every plan of 2 GPUs, batch 4, whose skipped end layers are bf16 and, as
    the search requires (docs/search.md, Limits), lie in the first (last) stage."""
    L = TINY.num_layers
    bf16_at = set(range(skip[0])) | set(range(L - skip[1], L))

    def allowed(division, layers):
        if len(division) > 1 and (division[0] < skip[0] or division[-1] < skip[1]):
            return False
        return not any(layers[i].fp8 for i in bf16_at)
    return engine_brute_force(cost, 2, budget_gb, space, 4, allowed, pps)


@pytest.mark.parametrize("budget_gb, skip", [(2.3, (0, 0)), (2.3, (1, 1)), (3.5, (2, 0)), (2.0, (0, 1))])
def test_fp8_search_matches_brute_force_and_keeps_skipped_layers_bf16(tmp_path, budget_gb, skip):
    space = dict(allow_checkpoint=False, sequence_parallel="off")
    s = fp8_searcher(tmp_path, budget_gb, skip, **space)
    found = s.run(top_k=1, progress=False)[0]
    layers = found.plan.layers
    assert all(x.fp8 is None for x in layers[:skip[0]] + layers[len(layers) - skip[1]:])
    assert any(x.fp8 == "tensorwise" for x in layers)  # faster here, so the DP takes it where allowed
    assert max(found.prediction.peak_mem_gb) <= budget_gb
    assert found.prediction.iter_time_s == pytest.approx(s.cost.evaluate(found.plan).iter_time_s)
    exact = brute_force(s.cost, budget_gb, s.space, skip)
    assert found.tokens_per_s <= exact * (1 + 1e-9)
    # the DP counts memory in rounded-up units: it may give up plans within a few percent of the budget
    assert found.tokens_per_s >= brute_force(s.cost, budget_gb * 0.97, s.space, skip) * (1 - 1e-9)


@pytest.mark.parametrize("skip", [(0, 2), (1, 1), (2, 0)])
def test_fp8_pipelines_match_brute_force_with_skipped_end_layers(tmp_path, skip):
    # every shape kept, so the best two-stage plan is solved exactly; its end stages are read
    # from their vocab end, and the stage holding skipped layers holds all of them
    s = fp8_searcher(tmp_path, 3.5, skip, allow_checkpoint=False, sequence_parallel="off")
    two = max((r for r in s.run(top_k=100, progress=False) if r.plan.pp_deg == 2), key=lambda r: r.tokens_per_s)
    layers = two.plan.layers
    assert all(x.fp8 is None for x in layers[:skip[0]] + layers[len(layers) - skip[1]:])
    assert two.prediction.iter_time_s == pytest.approx(s.cost.evaluate(two.plan).iter_time_s)
    assert two.tokens_per_s == pytest.approx(brute_force(s.cost, 3.5, s.space, skip, pps=[2]), rel=1e-9)


@pytest.mark.parametrize("skip", [(1, 1), (0, 2)])
def test_with_skipped_layers_the_quoted_smallest_budget_finds_a_plan(tmp_path, skip):
    # float8 layers keeping a third of the bytes and no weight copies: the skipped layers' bf16
    # floor then sets the minimum
    def factory(gb, skip=skip):
        return fp8_searcher(tmp_path, gb, skip, dict(act_scale=0.3, weight_bytes=0.0), allow_checkpoint=False)
    minimum = smallest_budget(factory)
    plan = factory(minimum).run(progress=False)[0].plan
    assert all(x.fp8 is None for x in plan.layers[:skip[0]] + plan.layers[len(plan.layers) - skip[1]:])
    assert minimum > smallest_budget(lambda gb: factory(gb, (0, 0)))


def test_fp8_strategies_are_the_bf16_ones_again_and_labelled():
    bf16 = layer_strategies(4, 8, TINY, Space())
    both = layer_strategies(4, 8, TINY, Space(fp8="rowwise"))
    assert both[:len(bf16)] == bf16 and [s.fp8 for s in both[len(bf16):]] == ["rowwise"] * len(bf16)
    assert label(both[len(bf16)]) == label(bf16[0]) + " fp8 rowwise"


# ---------------------------------------------------------------- command line

FLAGS = ["--model-family", "gpt2", "--num-layers", "3", "--hidden-size", "1024", "--num-attention-heads", "8",
         "--ffn-hidden-size", "4096", "--vocab-size", "8192", "--seq-length", "512"]


@pytest.mark.parametrize("extra, words", [
    (["--fp8", "rowwise"], "--fp8 rowwise"),              # the profile has tensorwise tables only
    (["--fp8-skip-first", "1"], "--fp8-skip-first"),
    (["--fp8", "tensorwise", "--fp8-skip-last", "-1"], "--fp8-skip-last"),
])
def test_search_cli_refuses_in_one_line(tmp_path, capsys, extra, words):
    prof = fp8_profiles(tmp_path, TINY, 2)
    with pytest.raises(SystemExit) as e:
        search_run.main(["--memory-gb", "8", "--num-gpus", "2", "--profile-dir", prof, "--no-plot", "--quiet",
                         "--output", str(tmp_path / "plan.json")] + FLAGS + extra)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and words in err and "\n" not in err and "Traceback" not in err


def test_search_with_fp8_off_ignores_the_fp8_tables(tmp_path, capsys):
    prof = fp8_profiles(tmp_path, TINY, 2)
    out = tmp_path / "plan.json"
    search_run.main(["--memory-gb", "8", "--num-gpus", "2", "--profile-dir", prof, "--no-plot", "--quiet",
                     "--output", str(out)] + FLAGS)
    assert not plan_mod.load(str(out)).has_fp8


def test_searched_fp8_plan_trains_like_the_reference(tmp_path):
    pytest.importorskip("torchao")
    from tests.equivalence import check_plans
    from tests.test_search_to_training import tiny_llama
    cfg, mc, flags = tiny_llama()
    prof = fp8_profiles(tmp_path, mc, 2)
    out = tmp_path / "plan.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "search", "run.py"), "--memory-gb", "8", "--num-gpus", "2",
                        "--profile-dir", prof, "--global-batch-size", "8", "--output", str(out), "--plot",
                        str(tmp_path / "plan.png"), "--quiet", "--fp8", "tensorwise", "--fp8-skip-first", "1"]
                       + flags, cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    plan = plan_mod.load(str(out))
    assert plan.describe().splitlines()[1] in r.stdout and "fp8" in plan.describe().splitlines()[1]  # its header
    assert plan.layers[0].fp8 is None and any(s.fp8 == "tensorwise" for s in plan.layers[1:])
    check_plans(2, cfg, [plan])


def test_compute_bound_counts_the_faster_fp8_layer():
    from search.bound import compute_bound
    prof = parse_model(fp8_profile())
    bf16, fp8 = compute_bound(prof, 4, 1e6), compute_bound(prof, 4, 1e6, "tensorwise")
    assert bf16.layer_s_per_token == pytest.approx(9e-7 + 1.8e-6)  # layer.bf16, faster than autocast
    assert fp8.layer_s_per_token == pytest.approx(5e-7 + 1e-6)     # layer.fp8.tensorwise, faster still
