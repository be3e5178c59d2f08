"""Ulysses in the cost model and the search: the all-to-alls priced from the hardware profile (or
from all-gather bandwidth without all_to_all entries), activation memory per rank divided by the
group, and the search's choice per layer equal to brute force over every plan of a small instance."""
import dataclasses
import itertools

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import ULYSSES, LayerStrategy, Plan, VocabStrategy
from megatron_galvatron.profile_format import bus_factor, load_profiles
from search import synthetic, ulysses_cost
from search.comm import Network
from search.cost_model import CostModel
from search.engine import Searcher
from search.stage_memory import GiB
from search.strategies import Space, layer_strategies, vocab_strategies

# long sequences, few samples: a micro-batch of 1 or 2 cannot be split over 4 data-parallel ranks
LONG = GPTConfig(family="llama", num_layers=2, hidden_size=1024, num_attention_heads=8, num_query_groups=2,
                 ffn_hidden_size=2816, vocab_size=8192, seq_length=4096)


def cost_model(tmp_path, num_gpus=4, drop_all_to_all=False):
    d = synthetic.write_profiles(str(tmp_path / "h100"), LONG, num_gpus, num_gpus, "h100")
    hw, model = load_profiles(d)
    if drop_all_to_all:
        hw = dataclasses.replace(hw, collectives={k: v for k, v in hw.collectives.items() if k != "all_to_all"})
    return CostModel(LONG, model, Network(hw, num_gpus, num_gpus))


def test_all_to_all_priced_from_its_entries_or_from_all_gather(tmp_path):
    cost = cost_model(tmp_path)
    s = LayerStrategy(tp=4, sp=ULYSSES)
    tokens = 2 / 4 * LONG.seq_length  # per rank: 2 samples over 4 ranks
    # q (8 heads) with K/V (2 heads, each sent twice to reach 4): 8 + 2 * 4 heads; then the output's 8
    sizes = [tokens * (8 + 2 * 4) * LONG.head_dim * 2, tokens * 8 * LONG.head_dim * 2]

    def by_hand(op):
        fit = cost.net.hw.collectives[op][(4, "consec")]
        return sum(fit.line(b)[0] + bus_factor("all_to_all", 4) * b / (fit.line(b)[1] * 1e9) for b in sizes)

    assert abs(ulysses_cost.exchange_seconds(cost, s, 4, 2) - by_hand("all_to_all")) < 1e-12
    fallback = cost_model(tmp_path / "no_a2a", drop_all_to_all=True)
    assert ulysses_cost.all_to_all_op(fallback.net.hw) == "all_gather"
    assert abs(ulysses_cost.exchange_seconds(fallback, s, 4, 2) - by_hand("all_gather")) < 1e-12
    # forward and backward exchange; a checkpointed layer exchanges its forward's again
    twin = cost.layer_time(LayerStrategy(tp=1), 4, 2)
    a2a = ulysses_cost.exchange_seconds(cost, s, 4, 2)
    assert abs(cost.layer_time(s, 4, 2).per_mb - twin.per_mb - 2 * a2a) < 1e-12
    ck = dataclasses.replace(s, checkpoint=True)
    assert abs(cost.layer_time(ck, 4, 2).per_mb - cost.layer_time(LayerStrategy(tp=1, checkpoint=True), 4, 2).per_mb
               - 3 * a2a) < 1e-12


def test_activation_memory_per_rank_is_divided_by_the_group(tmp_path):
    cost = cost_model(tmp_path)
    one = cost.layer_memory(LayerStrategy(tp=1), 1, 1).activation  # a whole sequence on one rank
    for u in (2, 4):
        m = cost.layer_memory(LayerStrategy(tp=u, sp=ULYSSES), u, 1)
        assert abs(m.activation - one / u) <= 1e-9 * one
        # parameters whole on every rank (ddp over the group): the states of an unsharded layer
        assert m.states == cost.layer_memory(LayerStrategy(tp=1), 1, 1).states


SPACE = Space(allow_zero3=False, allow_checkpoint=False, sequence_parallel="off", ulysses="search")


def brute_force(cost, num_gpus, budget_gb, space, batch, pps=(1, 2)):
    best, best_plan = 0.0, None
    n = LONG.num_layers
    for pp in pps:
        sw = num_gpus // pp
        divisions = [d for d in itertools.product(range(1, n + 1), repeat=pp) if sum(d) == n]
        for chunks in (c for c in range(1, batch + 1) if batch % c == 0):
            mb = batch // chunks
            layers = layer_strategies(sw, mb, LONG, space)
            for vocab, ptype, division in itertools.product(vocab_strategies(sw, mb, LONG, space),
                                                            ("1f1b", "gpipe"), divisions):
                for assign in itertools.product(layers, repeat=n):
                    plan = Plan(num_gpus, pp, list(division), batch, chunks, list(assign), vocab, ptype)
                    pred = cost.evaluate(plan)
                    if max(pred.stage_reserved) <= budget_gb * GiB and pred.tokens_per_s > best:
                        best, best_plan = pred.tokens_per_s, plan
    return best, best_plan


def test_search_matches_brute_force_with_ulysses(tmp_path):
    cost = cost_model(tmp_path)
    searcher = Searcher(cost, 4, 60.0, SPACE, [2], ["1f1b", "gpipe"], max_pp=2, threads=1)
    found = searcher.run(top_k=1, progress=False)[0]
    exact, _ = brute_force(cost, 4, 60.0, SPACE, 2)
    assert abs(found.tokens_per_s - exact) <= 1e-9 * exact, found.plan.describe()
    found.plan.validate(LONG, 4)


def test_one_long_sequence_on_four_gpus_takes_ulysses(tmp_path):
    """One sample per step with 2 K/V heads: TP cannot split it 4 ways, so without Ulysses only a
    two-stage pipeline of TP-2 runs it (half of the time idle); the search takes Ulysses-4."""
    cost = cost_model(tmp_path)
    found = Searcher(cost, 4, 60.0, SPACE, [1], ["1f1b"], max_pp=2, threads=1).run(top_k=1, progress=False)[0]
    exact, plan = brute_force(cost, 4, 60.0, SPACE, 1)
    assert abs(found.tokens_per_s - exact) <= 1e-9 * exact
    assert found.plan.pp_deg == 1 and all(s.ulysses and s.tp == 4 for s in found.plan.layers), found.plan.describe()
    without, _ = brute_force(cost, 4, 60.0, dataclasses.replace(SPACE, ulysses="off"), 1)
    assert 0 < without < exact


def test_strategies_offer_ulysses_only_where_it_runs():
    space = Space(ulysses="search")
    layers = [s for s in layer_strategies(4, 1, LONG, space) if s.ulysses]
    # a micro-batch of one sample: only a group of the whole stage splits it; any K/V head count
    assert {s.tp for s in layers} == {4} and {s.dp_type for s in layers} == {"ddp", "zero2", "zero3"}
    assert {s.tp for s in layer_strategies(4, 2, LONG, space) if s.ulysses} == {2, 4}
    assert VocabStrategy(tp=4, sp=ULYSSES, dp_type="zero3") in vocab_strategies(4, 1, LONG, space)
    odd = dataclasses.replace(LONG, num_attention_heads=6, hidden_size=768)
    assert not [s for s in layer_strategies(4, 1, odd, space) if s.ulysses]  # 6 heads over 4 ranks
    assert not [s for s in layer_strategies(4, 1, LONG, Space()) if s.ulysses]  # off by default


def test_run_cli_writes_a_ulysses_plan_and_names_the_all_gather_estimate(tmp_path):
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    d = synthetic.write_profiles(str(tmp_path / "prof"), LONG, 4, 4, "h100")
    flags = ["--model-family", "llama", "--num-layers", "2", "--hidden-size", "1024", "--num-attention-heads", "8",
             "--num-query-groups", "2", "--ffn-hidden-size", "2816", "--vocab-size", "8192", "--seq-length", "4096",
             "--memory-gb", "60", "--num-gpus", "4", "--profile-dir", d, "--global-batch-size", "1", "--quiet",
             "--ulysses", "search", "--no-plot"]

    def run(out):
        return subprocess.run([sys.executable, os.path.join(root, "search", "run.py"), "--output", str(out)] + flags,
                              cwd=str(tmp_path), capture_output=True, text=True, timeout=240)

    r = run(tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    p = Plan.from_dict(json.loads((tmp_path / "plan.json").read_text())).validate(LONG, 4)
    assert all(s.ulysses for s in p.layers) and "ulysses4" in r.stdout and "all-gather" not in r.stderr
    hw = json.loads(open(os.path.join(d, "hardware.json")).read())
    del hw["collectives"]["all_to_all"]
    with open(os.path.join(d, "hardware.json"), "w") as f:
        json.dump(hw, f)
    r = run(tmp_path / "plan2.json")
    assert r.returncode == 0, r.stderr
    assert "no all_to_all entries" in r.stderr and "all-gather bandwidth" in r.stderr
