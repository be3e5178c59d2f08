"""Profile schema: synthetic profiles load, broken ones fail with one line naming file and key."""
import copy
import json
import os

import pytest

from megatron_galvatron import profile_format as profiles
from megatron_galvatron.profile_format import (ProfileError, bus_factor, check_model_matches, load_profiles,
                                               parse_hardware, parse_model)
from search import synthetic
from search.comm import Network
from search.cost_model import CostModel
from megatron_galvatron.model.config import GPTConfig

CFG = GPTConfig(family="llama", num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4,
                ffn_hidden_size=704, vocab_size=1000, seq_length=256)


@pytest.fixture
def prof_dir(tmp_path):
    return synthetic.write_profiles(str(tmp_path / "prof"), CFG, num_gpus=16, gpus_per_node=8)


def read(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def write(d, name, data):
    with open(os.path.join(d, name), "w") as f:
        json.dump(data, f)


def test_synthetic_profiles_load(prof_dir):
    hw, model = load_profiles(prof_dir)
    assert (hw.num_gpus, hw.num_nodes, hw.gpus_per_node) == (16, 2, 8)
    assert set(hw.collectives) == set(profiles.COLLECTIVES)
    assert hw.collectives["all_reduce"][(8, "consec")].bandwidth_GBps == 360.0
    assert hw.collectives["all_reduce"][(16, "consec")].bandwidth_GBps == 45.0
    assert model.layer_param_count == CFG.layer_param_count()
    check_model_matches(model, CFG.to_dict())
    fwd, bwd = model.layer_fits(2, True)
    assert bwd(1000) > fwd(1000) > 0


def test_untested_tp_degrees_scale_from_the_largest_profiled_below(prof_dir):
    _, model = load_profiles(prof_dir)
    model.layer_time = {k: v for k, v in model.layer_time.items() if k[0] <= 2}
    model.activation_bytes_per_token = {k: v for k, v in model.activation_bytes_per_token.items() if k[0] <= 2}
    fwd2, _ = model.layer_fits(2, False)
    fwd8, _ = model.layer_fits(8, False)
    assert fwd8.per_token_s == pytest.approx(fwd2.per_token_s / 4)
    assert fwd8.intercept_s == fwd2.intercept_s
    assert model.activation_per_token(8, True) == pytest.approx(model.activation_per_token(2, True) / 4)


@pytest.mark.parametrize("path, key", [
    (("layer", "memory", "param_count"), "layer.memory.param_count"),
    (("layer", "time", "tp1"), "layer.time.tp1"),
    (("vocab",), "vocab"),
    (("allocator", "reserved_over_allocated"), "allocator.reserved_over_allocated"),
    (("model", "seq_length"), "model.seq_length"),
])
def test_missing_model_key_is_named(prof_dir, path, key):
    d = read(prof_dir, "model.json")
    node = d
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    write(prof_dir, "model.json", d)
    with pytest.raises(ProfileError) as e:
        load_profiles(prof_dir)
    msg = str(e.value)
    assert f"'{key}'" in msg and "model.json" in msg and "\n" not in msg


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.__setitem__("schema", "galvatron/0"), "schema"),
    (lambda d: d["overlap"].__setitem__("compute_slowdown", 0.5), "overlap.compute_slowdown"),
    (lambda d: d["collectives"].pop("all_gather"), "collectives.all_gather"),
    (lambda d: d["collectives"]["all_reduce"].__setitem__("eight", {}), "collectives.all_reduce.eight"),
    (lambda d: d["hardware"].__setitem__("num_nodes", 3), "hardware.num_gpus"),
    (lambda d: d["p2p"]["2"].__setitem__("bandwidth_GBps", "fast"), "p2p.2.bandwidth_GBps"),
])
def test_bad_hardware_profile_is_named(prof_dir, mutate, words):
    d = read(prof_dir, "hardware.json")
    mutate(d)
    write(prof_dir, "hardware.json", d)
    with pytest.raises(ProfileError) as e:
        load_profiles(prof_dir)
    assert words in str(e.value) and "hardware.json" in str(e.value)


def test_missing_files_and_bad_json(tmp_path, prof_dir):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profiles(str(tmp_path / "nope"))
    os.remove(os.path.join(prof_dir, "model.json"))
    with pytest.raises(ProfileError, match="model.json does not exist"):
        load_profiles(prof_dir)
    with open(os.path.join(prof_dir, "model.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profiles(prof_dir)


def test_model_profile_must_match_the_flags(prof_dir):
    _, model = load_profiles(prof_dir)
    other = dict(CFG.to_dict(), hidden_size=512)
    with pytest.raises(ProfileError, match="hidden_size=256 but --hidden-size is 512"):
        check_model_matches(model, other)


def test_search_across_nodes_needs_an_inter_node_measurement():
    one_node = synthetic.hardware_profile(8, 8)
    hw = parse_hardware(copy.deepcopy(one_node))
    Network(hw, num_gpus=8, gpus_per_node=8)
    with pytest.raises(ProfileError, match="no inter-node measurement"):
        Network(hw, num_gpus=16, gpus_per_node=8)


def test_parse_model_rejects_non_bf16():
    d = synthetic.model_profile(CFG)
    d["dtype"] = "fp16"
    with pytest.raises(ProfileError, match="dtype"):
        parse_model(d)


def _with_optional_tables(d):
    fit = {"intercept_s": 1e-4, "per_token_s": 1e-7, "points": []}
    d = copy.deepcopy(d)
    d["layer"]["memory"]["activation_constant_bytes"] = {"tp1": 1000.0, "tp2": 500.0}
    d["layer"]["bf16"] = {"time": {"tp1": {"fwd": fit, "bwd": fit}},
                             "activation_bytes_per_token": {"tp1": 300.0, "tp2_sp": 100.0},
                             "checkpoint_bytes_per_token": {"tp1": 20.0}}
    d["vocab"]["activation_constant_bytes"] = {"tp1": 64.0}
    d["vocab"]["embedding_time"] = {"tp1": {"fwd": fit, "bwd": fit}}
    d["vocab"]["bf16"] = {"time": {"tp1": {"fwd": fit, "bwd": fit}}, "activation_bytes_per_token": {"tp1": 7.0}}
    return d


def test_optional_tables_are_read_and_scaled_like_the_required_ones(prof_dir):
    m = parse_model(_with_optional_tables(read(prof_dir, "model.json")))
    assert m.layer_constant(1, False) == 1000.0
    assert m.layer_constant(4, True) == 250.0      # from tp2 (no tp2_sp entry), scaled by 2/4
    assert m.bf16_activation_per_token(2, True) == 100.0
    assert m.bf16_activation_per_token(2, False) == 150.0  # from tp1, scaled by 1/2
    assert m.bf16_checkpoint_per_token(1, False) == 20.0
    fwd, _ = m.bf16_layer_fits(2, False)
    assert (fwd.intercept_s, fwd.per_token_s) == (1e-4, 5e-8)
    assert m.vocab_constant(2) == 32.0
    assert m.bf16_vocab_activation_per_token(1) == 7.0
    assert m.embedding_fits(1)[1](10) == pytest.approx(1e-4 + 1e-6)
    assert m.bf16_vocab_fits(1) is not None


def test_optional_tables_absent_read_as_none(prof_dir):
    m = parse_model(read(prof_dir, "model.json"))
    assert m.layer_constant(1, False) is None and m.vocab_constant(1) is None
    assert m.bf16_layer_fits(1, False) is None and m.bf16_activation_per_token(1, False) is None
    assert m.bf16_vocab_fits(1) is None and m.embedding_fits(1) is None


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["layer"]["bf16"].update(time={"tp1": {"fwd": {"intercept_s": 0.0, "points": []}}}),
     "layer.bf16.time.tp1.fwd.per_token_s"),
    (lambda d: d["layer"]["bf16"]["activation_bytes_per_token"].update(tp3x=1.0),
     "layer.bf16.activation_bytes_per_token.tp3x"),
    (lambda d: d["vocab"].update(bf16=[]), "vocab.bf16"),
    (lambda d: d["layer"]["memory"]["activation_constant_bytes"].update(tp1=-1.0),
     "layer.memory.activation_constant_bytes.tp1"),
])
def test_malformed_optional_tables_are_named(prof_dir, mutate, key):
    d = _with_optional_tables(read(prof_dir, "model.json"))
    mutate(d)
    with pytest.raises(ProfileError, match=key.replace(".", r"\.")):
        parse_model(d)


# ------------------------------------------------------------------ piecewise communication fits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_HW = os.path.join(ROOT, "examples", "profiles", "h200x2_llama7b_seq2048", "hardware.json")
SEGMENTS = [{"max_bytes": 4e6, "latency_s": 5e-6, "bandwidth_GBps": 50.0},
            {"max_bytes": 64e6, "latency_s": 15e-6, "bandwidth_GBps": 150.0},
            {"max_bytes": None, "latency_s": 30e-6, "bandwidth_GBps": 300.0}]


def test_profiles_without_segments_price_exactly_as_one_line(prof_dir):
    # files written before segments existed: the same expression on the top-level numbers, to the bit
    with open(REAL_HW) as f:
        real = json.load(f)
    for table in list(real["collectives"].values()) + [real["p2p"]]:
        for e in table.values():
            del e["segments"]
    for d, gpus, per_node in ((real, 2, 2), (read(prof_dir, "hardware.json"), 16, 8)):
        hw = parse_hardware(d)
        net = Network(hw, num_gpus=gpus, gpus_per_node=per_node)
        sizes = [2.0 ** k for k in range(8, 32, 3)] + [3e6, 7.5e7]
        for op in profiles.REQUIRED_COLLECTIVES:
            for (n, layout), f in hw.collectives[op].items():
                assert f.segments == ()
                if layout != "consec":
                    continue
                for b in sizes:
                    assert net.collective(op, n, 1, b) == f.latency_s + bus_factor(op, n) * b / (f.bandwidth_GBps * 1e9)
        for pp, f in hw.p2p.items():
            if hw.num_gpus // pp < per_node:  # stages inside a node: this entry is the one picked
                for b in sizes:
                    assert net.p2p(pp, gpus // pp, b) == f.latency_s + b / (f.bandwidth_GBps * 1e9)


def test_network_prices_a_size_by_its_segment(prof_dir):
    d = read(prof_dir, "hardware.json")
    d["collectives"]["all_reduce"]["8_consec"]["segments"] = copy.deepcopy(SEGMENTS)
    d["p2p"]["2"]["segments"] = copy.deepcopy(SEGMENTS)
    hw = parse_hardware(d)
    assert hw.collectives["all_reduce"][(8, "consec")].segments[1].max_bytes == 64e6
    net = Network(hw, num_gpus=16, gpus_per_node=8)
    f = 2 * 7 / 8  # all-reduce over 8 ranks
    assert net.collective("all_reduce", 8, 1, 1e3) == pytest.approx(5e-6 + f * 1e3 / 50e9)   # below the sweep
    assert net.collective("all_reduce", 8, 1, 4e6) == pytest.approx(5e-6 + f * 4e6 / 50e9)   # bound: inclusive
    assert net.collective("all_reduce", 8, 1, 1e7) == pytest.approx(15e-6 + f * 1e7 / 150e9)
    assert net.collective("all_reduce", 8, 1, 1e10) == pytest.approx(30e-6 + f * 1e10 / 300e9)  # above it
    # entries without segments in the same file keep their one line
    ag = hw.collectives["all_gather"][(8, "consec")]
    assert ag.segments == () and ag.bandwidth_GBps == 360.0
    assert net.collective("all_gather", 8, 1, 1e7) == pytest.approx(ag.latency_s + 7 / 8 * 1e7 / 360e9)
    # p2p.2 splits 16 GPUs into stages of a node each
    assert net.p2p(2, 8, 1e6) == pytest.approx(5e-6 + 1e6 / 50e9)
    assert net.p2p(2, 8, 1e8) == pytest.approx(30e-6 + 1e8 / 300e9)


def test_cost_model_prices_by_segment():
    from tests.test_search_cost_model import CFG as CM_CFG, hardware_dict, model_dict

    d = hardware_dict()
    d["p2p"]["2"]["segments"] = [{"max_bytes": 100000, "latency_s": 3e-6, "bandwidth_GBps": 5.0},
                                 {"max_bytes": None, "latency_s": 1e-5, "bandwidth_GBps": 25.0}]
    cm = CostModel(CM_CFG, parse_model(model_dict()), Network(parse_hardware(d), num_gpus=8, gpus_per_node=4))
    full = 128 * 64 * 2  # one sample's bf16 activations: seq x hidden x 2 bytes, split over a stage of 4
    assert cm.p2p(2, 4, 8) == pytest.approx(3e-6 + 8 * full / 4 / 5e9)      # 32768 bytes: first segment
    assert cm.p2p(2, 4, 32) == pytest.approx(1e-5 + 32 * full / 4 / 25e9)   # 131072 bytes: the last


@pytest.mark.parametrize("mutate, key", [
    (lambda s: s.clear(), "collectives.all_reduce.8_consec.segments"),
    (lambda s: s[0].update(max_bytes=None), "collectives.all_reduce.8_consec.segments[0].max_bytes"),
    (lambda s: s[2].update(max_bytes=1e9), "collectives.all_reduce.8_consec.segments[2].max_bytes"),
    (lambda s: s[1].update(max_bytes=1e6), "collectives.all_reduce.8_consec.segments[1].max_bytes"),
    (lambda s: s[1].update(bandwidth_GBps=0), "collectives.all_reduce.8_consec.segments[1].bandwidth_GBps"),
    (lambda s: s[0].update(latency_s=-1e-6), "collectives.all_reduce.8_consec.segments[0].latency_s"),
    (lambda s: s[0].pop("latency_s"), "collectives.all_reduce.8_consec.segments[0].latency_s"),
    (lambda s: s.__setitem__(1, 7), "collectives.all_reduce.8_consec.segments[1]"),
])
def test_malformed_segments_are_named(prof_dir, mutate, key):
    d = read(prof_dir, "hardware.json")
    segs = copy.deepcopy(SEGMENTS)
    mutate(segs)
    d["collectives"]["all_reduce"]["8_consec"]["segments"] = segs
    with pytest.raises(ProfileError) as e:
        parse_hardware(d)
    assert f"'{key}" in str(e.value) and "\n" not in str(e.value)


def test_sustained_slowdown_slows_every_compute_table(prof_dir):
    _, plain = load_profiles(prof_dir)
    m = read(prof_dir, "model.json")
    m["sustained"] = {"slowdown": 1.25, "chain_s": 1.25, "alone_s": 1.0}
    write(prof_dir, "model.json", m)
    _, slow = load_profiles(prof_dir)
    for tp, sp in plain.layer_time:
        for a, b in zip(plain.layer_fits(tp, sp), slow.layer_fits(tp, sp)):
            assert b(4096) == pytest.approx(1.25 * a(4096))
    for tp in plain.vocab_time:
        for a, b in zip(plain.vocab_time[tp], slow.vocab_time[tp]):
            assert b(4096) == pytest.approx(1.25 * a(4096))
    assert slow.step_s_per_param == plain.step_s_per_param  # memory-bound optimizer left alone
    m["sustained"] = {"slowdown": -1}
    write(prof_dir, "model.json", m)
    with pytest.raises(ProfileError, match="sustained.slowdown"):
        load_profiles(prof_dir)
