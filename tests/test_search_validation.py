"""The cost model against the 2x H200 GPU run in results/h200x2_gpt1p4b/validation_autocast_runtime (GPT 1.4B),
read from its copy under tests/fixtures/results/.

Keeps docs/log.md honest: the predictions printed there are recomputed here
from the files in the repository, so a change to the cost model that moves them fails until the
document is updated.

That run's own model.json was not kept. Its memory terms are device-independent and equal to
those of examples/profiles/h100x1_gpt1p4b_seq2048/model.json (the same tool on the same model; the
run's profile.log prints the same bytes per token). Its times are rebuilt from what the run did
keep: the per-token slopes its profile.log prints, and the intercepts, which follow from the
eight predictions bench.json recorded (the previous cost model on that profile): with the values
below that model reproduces all eight to 0.01 %. The tp2 intercepts are the H100 profile's (the
one prediction that uses them is reproduced with them). The embedding timing, which the previous
model did not use, is the H100's scaled by the devices' ratio of AdamW step times (both memory-bound).
"""
import json
import os

import pytest

from megatron_galvatron.plan import Plan
from megatron_galvatron.profile_format import parse_hardware, parse_model
from search.comm import Network
from tests.earlier_runtime import EarlierRuntimeCostModel
from megatron_galvatron.model.config import GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "tests", "fixtures", "results", "h200x2_gpt1p4b", "validation_autocast_runtime")
H100 = os.path.join(ROOT, "examples", "profiles", "h100x1_gpt1p4b_seq2048", "model.json")

# us per token (fwd, bwd) from the run's profile.log; intercepts in seconds recovered from bench.json
H200_SLOPES = {("layer", "tp1"): (0.194, 0.378), ("layer", "tp2"): (0.125, 0.236),
               ("layer", "tp2_sp"): (0.108, 0.200), ("vocab", "tp1"): (0.326, 0.571),
               ("vocab", "tp2"): (0.166, 0.305)}
H200_INTERCEPTS = {("layer", "tp1"): (1.470e-4, 5.422e-4), ("vocab", "tp1"): (4.499e-4, 3.399e-4)}
H200_STEP_S_PER_PARAM = 8.04e-12
H200_ALLOCATOR = (1.033, 769 * 2 ** 20)

# A replicated unit with more than one data-parallel rank is never freed by the runtime
# (data_parallel/ddp.py: its gradient hooks form a reference cycle the garbage collector cannot
# see), so the benchmark's later configurations carry the fp32 weights and gradient buffer of the
# two replicated dp=2 plans that ran before them: 8 bytes per parameter each.
PARAMS = 24 * 50358272 + 50304 * 2048 + 2048 * 2048 + 2 * 2048
LEAKED_GIB = 8 * PARAMS / 2 ** 30
LEAKS_BEFORE = [0, 1, 2, 2, 2, 2, 2, 2]

# (predicted s, predicted GiB allocated) per bench.json plan, as docs/log.md prints them
EXPECTED = [(1.054, 52.53), (0.520, 82.82), (0.553, 42.12), (0.528, 62.39), (1.222, 26.72), (0.364, 44.63),
            (0.693, 40.26), (0.665, 82.99)]


def h200_model_profile():
    with open(H100) as f:
        d = json.load(f)
    for (part, key), (fwd, bwd) in H200_SLOPES.items():
        t = d[part]["time"][key]
        t["fwd"]["per_token_s"], t["bwd"]["per_token_s"] = fwd * 1e-6, bwd * 1e-6
        if (part, key) in H200_INTERCEPTS:
            t["fwd"]["intercept_s"], t["bwd"]["intercept_s"] = H200_INTERCEPTS[(part, key)]
    # The run printed no embedding timing. The lookup's backward (zeroing and scatter-adding a dense
    # fp32 gradient of the table) is memory-bound like the AdamW step, so the H100 timing is scaled
    # by the two devices' measured step times.
    ratio = H200_STEP_S_PER_PARAM / d["optimizer"]["step_s_per_param"]
    for t in d["vocab"]["embedding_time"].values():
        for part in ("fwd", "bwd"):
            t[part]["intercept_s"] *= ratio
            t[part]["per_token_s"] *= ratio
    d["optimizer"]["step_s_per_param"] = H200_STEP_S_PER_PARAM
    d["allocator"]["reserved_over_allocated"], d["allocator"]["fixed_overhead_bytes"] = H200_ALLOCATOR
    return d


def bench():
    with open(os.path.join(RUN, "bench.json")) as f:
        b = json.load(f)
    with open(os.path.join(RUN, "profile", "hardware.json")) as f:
        hw = json.load(f)
    m = b["model"]
    cfg = GPTConfig(family=m["family"], num_layers=m["num_layers"], hidden_size=m["hidden_size"],
                    num_attention_heads=m["num_attention_heads"], num_query_groups=m["num_query_groups"],
                    ffn_hidden_size=m["ffn_hidden_size"], vocab_size=m["vocab_size"], seq_length=m["seq_length"])
    # The measured run predates the runtime's ZeRO prefetch and bf16 compute on replicated units.
    cost = EarlierRuntimeCostModel(cfg, parse_model(h200_model_profile()), Network(parse_hardware(hw), 2, 2),
                                   prefetch=False)
    runs = [r for r in b["results"] if r.get("plan")]
    return cost, runs


def test_the_validation_table_is_current():
    cost, runs = bench()
    assert len(runs) == len(EXPECTED)
    for r, (t, gib) in zip(runs, EXPECTED):
        pred = cost.evaluate(Plan.from_dict(r["plan"]))
        assert pred.iter_time_s == pytest.approx(t, abs=6e-4), r["name"]
        assert max(pred.stage_allocated) / 2 ** 30 == pytest.approx(gib, abs=5e-3), r["name"]


def test_memory_within_two_percent_where_the_model_is_exact():
    """Peak allocated memory against the measurement less what earlier configurations leaked."""
    cost, runs = bench()
    for r, leaks in zip(runs, LEAKS_BEFORE):
        got = max(cost.evaluate(Plan.from_dict(r["plan"])).stage_allocated) / 2 ** 30
        measured = r["peak_mem_gb"] - leaks * LEAKED_GIB
        assert got == pytest.approx(measured, rel=0.02), r["name"]


RUN2 = os.path.join(ROOT, "tests", "fixtures", "results", "h200x2_gpt1p4b", "validation_sustained_profile")
# (predicted s, predicted GiB) per plan of run 2, as docs/log.md prints them
EXPECTED2 = [(1.0339, 69.95), (0.5290, 76.70), (0.5427, 42.12), (0.5286, 62.39), (1.2357, 26.72),
             (0.3249, 41.51), (0.6797, 36.27), (0.6456, 67.52), (0.7693, 92.07)]


def test_run2_with_the_sustained_profile():
    """Run 2: the cost model on the profile with its measured sustained slowdown, against what
    bench.json measured (errors, means and the oracle gap quoted in the document)."""
    from megatron_galvatron.model.config import GPTConfig
    from search.predict import predict
    with open(os.path.join(RUN2, "bench.json")) as f:
        bench = json.load(f)
    cfg = GPTConfig(**bench["model"])
    plans = [r for r in bench["results"] if r.get("plan")]
    got = []
    for r in plans:
        p = predict(Plan.from_dict(r["plan"]), cfg, os.path.join(RUN2, "profile"))
        got.append((p.iter_time_s, max(p.stage_allocated) / 2 ** 30))
    for (t, m), (et, em) in zip(got, EXPECTED2):
        assert t == pytest.approx(et, abs=1e-4) and m == pytest.approx(em, abs=0.01)
    terr = [abs(t / r["iter_time_s"] - 1) for (t, _), r in zip(got, plans)]
    merr = [abs(m / r["peak_mem_gb"] - 1) for (_, m), r in zip(got, plans)]
    assert sum(terr) / len(terr) == pytest.approx(0.033, abs=0.0005)
    assert sum(merr) / len(merr) == pytest.approx(0.004, abs=0.0005)
    assert max(merr) < 0.015
    # the searched plan is the fastest measured
    assert max(plans, key=lambda r: r["tokens_per_s_per_gpu"])["name"] == "plan.json"
