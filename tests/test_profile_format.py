"""The profile format module: what it writes it reads back, older versions are upgraded as they
are read, and a bad field is refused in one line that names it."""
import copy
import glob
import json
import os

import pytest

from megatron_galvatron import profile_format as pf
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import ARCHITECTURE_FIELDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "profiles", "synthetic_h100x8_llama7b")
# a version 1 model.json with the tables measured on bf16 weights (then called 'sharded')
V1_MODEL = os.path.join(ROOT, "tests", "fixtures", "results", "h200x2_gpt1p4b", "validation_sustained_profile",
                        "profile", "model.json")


def _repo_profiles(name):
    found = []
    for top in ("results", "examples", os.path.join("tests", "fixtures")):  # every profile the repo ships
        found += glob.glob(os.path.join(ROOT, top, "**", name), recursive=True)
    return sorted(found)


def _example(name):
    """An example profile as the current version: version 2 renamed only tables it does not have."""
    with open(os.path.join(EXAMPLE, name)) as f:
        d = json.load(f)
    d["schema"] = pf.HARDWARE_SCHEMA if name == pf.HARDWARE_FILE else pf.MODEL_SCHEMA
    return d


def test_round_trip(tmp_path):
    hw, model = _example(pf.HARDWARE_FILE), _example(pf.MODEL_FILE)
    model["layer"]["bf16"] = copy.deepcopy({"time": model["layer"]["time"]})
    hw_path, model_path = pf.write_hardware(hw, str(tmp_path)), pf.write_model(model, str(tmp_path))
    assert (os.path.basename(hw_path), os.path.basename(model_path)) == (pf.HARDWARE_FILE, pf.MODEL_FILE)
    for path, written in ((hw_path, hw), (model_path, model)):
        with open(path) as f:
            assert json.load(f) == written
    got_hw, got_model = pf.load_profiles(str(tmp_path))
    assert (got_hw.num_gpus, got_hw.gpus_per_node) == (hw["hardware"]["num_gpus"], hw["hardware"]["gpus_per_node"])
    assert set(got_hw.collectives) == set(hw["collectives"])
    assert got_model.layer_time == got_model.bf16_layer_time
    # what was written comes back, and a family-only record gains its preset's architecture fields
    assert {k: got_model.model[k] for k in model["model"]} == model["model"]
    assert set(got_model.model) - set(model["model"]) <= set(ARCHITECTURE_FIELDS)


def test_the_current_versions():
    assert pf.MODEL_SCHEMA == "megatron_galvatron.model_profile/4"
    assert pf.HARDWARE_SCHEMA == "megatron_galvatron.hardware_profile/1"


def test_version_1_model_is_upgraded_on_read():
    with open(V1_MODEL) as f:
        d = json.load(f)
    assert d["schema"].endswith("/1") and "sharded" in d["layer"] and "sharded" in d["vocab"]
    m = pf.parse_model(d, V1_MODEL)
    sharded = d["layer"]["sharded"]["time"]["tp1"]["fwd"]
    assert m.bf16_layer_fits(1, False)[0].per_token_s == pytest.approx(
        sharded["per_token_s"] * m.sustained_slowdown)
    assert m.bf16_vocab_fits(1) is not None and m.bf16_activation_bytes_per_token
    assert d["schema"].endswith("/1") and "sharded" in d["layer"]  # the caller's dict is left as it was


@pytest.mark.parametrize("path", _repo_profiles("hardware.json") + _repo_profiles("model.json"),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_profile_in_the_repository_reads(path):
    d = pf.read_json(path, "", "")
    if os.path.basename(path) == pf.HARDWARE_FILE:
        pf.parse_hardware(d, path)
    else:
        pf.parse_model(d, path, bf16_only=False)


def test_a_bad_field_is_refused_in_one_line_naming_it(tmp_path):
    d = _example(pf.MODEL_FILE)
    d["layer"]["time"]["tp1"]["fwd"]["per_token_s"] = -1.0
    with pytest.raises(UserError) as e:
        pf.write_model(d, str(tmp_path))
    msg = str(e.value)
    assert "layer.time.tp1.fwd.per_token_s" in msg and "\n" not in msg
    assert not os.path.exists(tmp_path / pf.MODEL_FILE)  # nothing written


@pytest.mark.parametrize("schema, words", [
    ("megatron_galvatron.model_profile/5", "newer"),
    ("megatron_galvatron.hardware_profile/1", "expected 'megatron_galvatron.model_profile/4'"),
    ("megatron_galvatron.model_profile/x", "expected"),
])
def test_unknown_versions_are_refused(schema, words):
    d = dict(_example(pf.MODEL_FILE), schema=schema)
    with pytest.raises(pf.ProfileError, match=words):
        pf.parse_model(d)


def test_version_3_model_reads_without_sequence_fits():
    d = dict(_example(pf.MODEL_FILE), schema="megatron_galvatron.model_profile/3")
    d.pop("sequence", None)
    m = pf.parse_model(d)
    assert m.seq_fits == {} and m.seq_lengths == ()
    assert m.for_seq_length(4 * m.model["seq_length"]) == (m, None)  # nothing to rescale from


def test_version_2_model_reads_without_fp8_tables():
    d = dict(_example(pf.MODEL_FILE), schema="megatron_galvatron.model_profile/2")
    d["layer"] = {k: v for k, v in d["layer"].items() if k != "fp8"}
    m = pf.parse_model(d)
    assert m.fp8 == {}
    with pytest.raises(pf.ProfileError, match="--fp8 tensorwise") as e:
        m.fp8_tables("tensorwise", 1, False)
    assert "\n" not in str(e.value)


def test_malformed_fp8_tables_name_the_key():
    d = copy.deepcopy(_example(pf.MODEL_FILE))
    d["layer"]["fp8"] = {"tensorwise": {"time": {"tp1": copy.deepcopy(d["layer"]["time"]["tp1"])},
                                        "activation_bytes_per_token": {"tp1": 10.0}}}
    with pytest.raises(pf.ProfileError, match="layer.fp8.tensorwise.checkpoint_bytes_per_token"):
        pf.parse_model(d)
    d["layer"]["fp8"] = {"e5m2": {}}
    with pytest.raises(pf.ProfileError, match="layer.fp8.e5m2"):
        pf.parse_model(d)
