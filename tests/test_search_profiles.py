"""Profile schema: synthetic profiles load, broken ones fail with one line naming file and key."""
import copy
import json
import os

import pytest

from search import profiles, synthetic
from search.comm import Network
from search.model_config import ModelConfig
from search.profiles import ProfileError, check_model_matches, load_profiles, parse_hardware, parse_model

CFG = ModelConfig(family="llama", num_layers=4, hidden_size=256, num_attention_heads=8, num_query_groups=4,
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
    with pytest.raises(ProfileError, match="model.json not found"):
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
    d["layer"]["sharded"] = {"time": {"tp1": {"fwd": fit, "bwd": fit}},
                             "activation_bytes_per_token": {"tp1": 300.0, "tp2_sp": 100.0},
                             "checkpoint_bytes_per_token": {"tp1": 20.0}}
    d["vocab"]["activation_constant_bytes"] = {"tp1": 64.0}
    d["vocab"]["embedding_time"] = {"tp1": {"fwd": fit, "bwd": fit}}
    d["vocab"]["sharded"] = {"time": {"tp1": {"fwd": fit, "bwd": fit}}, "activation_bytes_per_token": {"tp1": 7.0}}
    return d


def test_optional_tables_are_read_and_scaled_like_the_required_ones(prof_dir):
    m = parse_model(_with_optional_tables(read(prof_dir, "model.json")))
    assert m.layer_constant(1, False) == 1000.0
    assert m.layer_constant(4, True) == 250.0      # from tp2 (no tp2_sp entry), scaled by 2/4
    assert m.sharded_activation_per_token(2, True) == 100.0
    assert m.sharded_activation_per_token(2, False) == 150.0  # from tp1, scaled by 1/2
    assert m.sharded_checkpoint_per_token(1, False) == 20.0
    fwd, _ = m.sharded_layer_fits(2, False)
    assert (fwd.intercept_s, fwd.per_token_s) == (1e-4, 5e-8)
    assert m.vocab_constant(2) == 32.0
    assert m.sharded_vocab_activation_per_token(1) == 7.0
    assert m.embedding_fits(1)[1](10) == pytest.approx(1e-4 + 1e-6)
    assert m.sharded_vocab_fits(1) is not None


def test_optional_tables_absent_read_as_none(prof_dir):
    m = parse_model(read(prof_dir, "model.json"))
    assert m.layer_constant(1, False) is None and m.vocab_constant(1) is None
    assert m.sharded_layer_fits(1, False) is None and m.sharded_activation_per_token(1, False) is None
    assert m.sharded_vocab_fits(1) is None and m.embedding_fits(1) is None


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d["layer"]["sharded"].update(time={"tp1": {"fwd": {"intercept_s": 0.0, "points": []}}}),
     "layer.sharded.time.tp1.fwd.per_token_s"),
    (lambda d: d["layer"]["sharded"]["activation_bytes_per_token"].update(tp3x=1.0),
     "layer.sharded.activation_bytes_per_token.tp3x"),
    (lambda d: d["vocab"].update(sharded=[]), "vocab.sharded"),
    (lambda d: d["layer"]["memory"]["activation_constant_bytes"].update(tp1=-1.0),
     "layer.memory.activation_constant_bytes.tp1"),
])
def test_malformed_optional_tables_are_named(prof_dir, mutate, key):
    d = _with_optional_tables(read(prof_dir, "model.json"))
    mutate(d)
    with pytest.raises(ProfileError, match=key.replace(".", r"\.")):
        parse_model(d)
