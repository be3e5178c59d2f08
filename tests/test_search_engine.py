"""Search behaviour on synthetic profiles, and its optimality against brute-force enumeration."""
import itertools
import re
import warnings

import pytest

from megatron_galvatron.layout import Layout
from megatron_galvatron.plan import Plan
from megatron_galvatron.profile_format import load_profiles
from search import _dp_core  # noqa: F401  (CI builds it; without it these tests would crawl)
from search import dp, synthetic
from search.comm import Network
from search.cost_model import CostModel
from search.engine import InfeasibleError, Searcher
from search.stage_dp import min_max_partition
from megatron_galvatron.model.config import GPTConfig
from search.stage_memory import GiB
from search.strategies import Space, divisors, layer_strategies, vocab_strategies

GPT = GPTConfig(family="gpt2", num_layers=8, hidden_size=1024, num_attention_heads=16, num_query_groups=16,
                ffn_hidden_size=4096, vocab_size=50304, seq_length=1024)


def make_searcher(tmp_path, cfg, memory_gb, preset="h100", num_gpus=8, gpus_per_node=8, batch=(32,),
                  pipeline_types=("1f1b", "gpipe"), max_pp=None, **space):
    d = synthetic.write_profiles(str(tmp_path / preset), cfg, num_gpus, gpus_per_node, preset)
    hw, model = load_profiles(d)
    cost = CostModel(cfg, model, Network(hw, num_gpus, gpus_per_node))
    return Searcher(cost, num_gpus, memory_gb, Space(**space), batch, pipeline_types, max_pp=max_pp, threads=2)


def uses(plan, what):
    mods = list(plan.layers) + [plan.vocab]
    if what == "zero3":
        return any(s.dp_type == "zero3" for s in mods)
    return any(s.checkpoint for s in plan.layers)


def test_ample_memory_and_fast_links_need_no_checkpointing_nor_zero3(tmp_path):
    results = make_searcher(tmp_path, GPT, 1000, preset="fast-links").run(progress=False)
    best = results[0].plan
    assert not uses(best, "zero3") and not uses(best, "checkpoint")
    best.validate(GPT, 8)


def smallest_budget(searcher_factory):
    with pytest.raises(InfeasibleError) as e:
        searcher_factory(0.5).run(progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    return float(re.search(r"smallest budget that fits is ([0-9.]+) GB", msg).group(1))


def test_tight_budget_brings_zero3_and_checkpointing(tmp_path):
    def factory(gb):
        return make_searcher(tmp_path, GPT, gb, max_pp=1, max_tp=2)
    minimum = smallest_budget(factory)
    tight = factory(minimum * 1.02).run(progress=False)[0]
    assert uses(tight.plan, "zero3") and uses(tight.plan, "checkpoint")
    assert max(tight.prediction.peak_mem_gb) <= minimum * 1.02
    roomy = factory(minimum * 4).run(progress=False)[0]
    assert roomy.tokens_per_s > tight.tokens_per_s


def test_below_the_minimum_the_error_quotes_a_budget_that_works(tmp_path):
    def factory(gb):
        return make_searcher(tmp_path, GPT, gb)
    minimum = smallest_budget(factory)
    results = factory(minimum).run(progress=False)
    assert max(results[0].prediction.peak_mem_gb) <= minimum
    with pytest.raises(InfeasibleError, match=f"smallest budget that fits is {minimum:.2f} GB"):
        factory(minimum - 0.02).run(progress=False)


def test_every_plan_fits_validates_and_costs_what_the_dp_said(tmp_path):
    # cheap links and little memory: plans mix layouts, stages and vocab layouts
    cfg = GPTConfig(family="llama", num_layers=16, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                    ffn_hidden_size=11008, vocab_size=32000, seq_length=4096)
    s = make_searcher(tmp_path, cfg, 8, preset="fast-links", num_gpus=16, batch=(64,))
    results = s.run(top_k=5, progress=False)
    assert len(results) == 5
    assert [r.tokens_per_s for r in results] == sorted((r.tokens_per_s for r in results), reverse=True)
    assert any(r.plan.pp_deg > 1 for r in results)
    assert any(len({Layout.of(x, r.plan.stage_world) for x in r.plan.layers + [r.plan.vocab]}) > 1 for r in results)
    for r in results:
        assert max(r.prediction.peak_mem_gb) <= 8
        Plan.from_dict(r.plan.to_dict()).validate(cfg, 16)
        # the DP's per-stage objective, re-priced layer by layer by the cost model
        k = r.plan.chunks + r.plan.pp_deg - 1
        repriced = [k * mb + it for mb, it in zip(r.prediction.stage_per_mb, r.prediction.stage_per_iter)]
        assert r.stage_objective == pytest.approx(repriced, rel=1e-9)


TINY = GPTConfig(family="gpt2", num_layers=3, hidden_size=1024, num_attention_heads=8, num_query_groups=8,
                 ffn_hidden_size=4096, vocab_size=8192, seq_length=512)


def brute_force(cost, num_gpus, budget_gb, space, batch, allowed=lambda division, layers: True, pps=None):
    """Best tokens/s over every plan: pp (among `pps`), division, chunks, pipeline, vocab and
    per-layer strategy (those whose division and layers' strategies `allowed` accepts)."""
    best = 0.0
    L = TINY.num_layers
    for pp in pps or divisors(num_gpus):
        sw = num_gpus // pp
        divisions = [d for d in itertools.product(range(1, L + 1), repeat=pp) if sum(d) == L]
        for chunks in divisors(batch):
            mb = batch // chunks
            layers = layer_strategies(sw, mb, TINY, space)
            for vocab, ptype, division in itertools.product(vocab_strategies(sw, mb, TINY, space),
                                                            ("1f1b", "gpipe"), divisions):
                for assign in itertools.product(layers, repeat=L):
                    if not allowed(division, assign):
                        continue
                    plan = Plan(num_gpus, pp, list(division), batch, chunks, list(assign), vocab, ptype)
                    pred = cost.evaluate(plan)
                    if max(pred.stage_reserved) <= budget_gb * GiB:
                        best = max(best, pred.tokens_per_s)
    return best


@pytest.mark.parametrize("budget_gb", [1.95, 2.3, 3.5])
def test_search_matches_brute_force_on_a_tiny_model(tmp_path, budget_gb):
    s = make_searcher(tmp_path, TINY, budget_gb, num_gpus=2, gpus_per_node=2, batch=(4,))
    found = s.run(top_k=1, progress=False)[0]
    assert max(found.prediction.peak_mem_gb) <= budget_gb
    exact = brute_force(s.cost, 2, budget_gb, s.space, 4)
    assert found.tokens_per_s <= exact * (1 + 1e-9)
    # the DP counts memory in rounded-up units: it may give up plans within a few percent of the budget
    assert found.tokens_per_s >= brute_force(s.cost, 2, budget_gb * 0.97, s.space, 4) * (1 - 1e-9)


def test_min_max_partition():
    costs = [[1, 2, 3, 4], [1, 3, 5, 7], [2, 2, 2, 9]]
    n = min_max_partition([list(map(float, c)) for c in costs], 6)
    assert sum(n) == 6 and max(c[k - 1] for c, k in zip(costs, n)) == 2  # [2, 1, 3]
    assert min_max_partition([[1.0, float("inf")], [1.0, float("inf")]], 4) is None


def test_runtime_falls_back_to_numpy_with_a_warning(tmp_path, monkeypatch):
    want = make_searcher(tmp_path, TINY, 3.5, num_gpus=2, gpus_per_node=2, batch=(4,)).run(top_k=1, progress=False)
    monkeypatch.setattr(dp, "_dp_core", None)
    monkeypatch.setattr(dp, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = make_searcher(tmp_path, TINY, 3.5, num_gpus=2, gpus_per_node=2, batch=(4,)).run(top_k=1,
                                                                                               progress=False)
    assert any(issubclass(w.category, RuntimeWarning) and "numpy" in str(w.message) for w in caught)
    assert got[0].tokens_per_s == pytest.approx(want[0].tokens_per_s)
