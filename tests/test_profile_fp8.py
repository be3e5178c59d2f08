"""tools/profile_model.py --fp8 on CPU (torchao's emulated float8): the layer.fp8 tables, what a
float8 layer saves for backward, the search reading them, and the one-line error without torchao."""
import json
import os
import sys

import pytest

from megatron_galvatron import profile_format as profiles
from search import synthetic
from tests.dist_utils import run_launched

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
         "--vocab-size", "256"]
KEYS = {"time", "recompute_fraction", "activation_bytes_per_token", "checkpoint_bytes_per_token",
        "activation_constant_bytes", "points"}


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory):
    pytest.importorskip("torchao")
    out = str(tmp_path_factory.mktemp("fp8_profile"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=ROOT)
    r = run_launched([sys.executable, "tools/profile_model.py", "--out-dir", out, "--quiet", "--dtype", "bf16",
                      "--micro-batch-sizes", "1", "2", "4", "--tp", "1", "2", "--warmup", "1", "--iters", "1",
                      "--fp8", "tensorwise", "rowwise", *MODEL], 240, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tensorwise" in r.stdout and "rowwise" in r.stdout  # the summary's rows
    return out


def _model(d):
    with open(os.path.join(d, profiles.MODEL_FILE)) as f:
        return json.load(f)


def test_fp8_tables_have_the_bf16_tables_shape(profile_dir):
    d = _model(profile_dir)
    assert d["schema"] == profiles.MODEL_SCHEMA and d["settings"]["fp8"] == ["tensorwise", "rowwise"]
    bf16 = d["layer"]["bf16"]
    for recipe in ("tensorwise", "rowwise"):
        t = d["layer"]["fp8"][recipe]
        assert set(t) == KEYS
        for key in ("time", "activation_bytes_per_token", "checkpoint_bytes_per_token", "recompute_fraction"):
            assert set(t[key]) == set(bf16[key]) == {"tp1", "tp2", "tp2_sp"}
        for entry in t["time"].values():
            assert set(entry) >= {"fwd", "bwd", "bwd_checkpointed"}
            assert len(entry["fwd"]["points"]) == 3 and entry["fwd"]["per_token_s"] >= 0
    prof = profiles.parse_model(d)
    assert set(prof.fp8) == {"tensorwise", "rowwise"}
    assert prof.fp8_tables("rowwise", 2, True).fits == prof.fp8["rowwise"].time[(2, True)]


def test_tensorwise_layer_saves_float8_inputs(profile_dir):
    d = _model(profile_dir)
    bf16, tw, rw = d["layer"]["bf16"], d["layer"]["fp8"]["tensorwise"], d["layer"]["fp8"]["rowwise"]
    # elements per token entering the linears (qkv, proj, fc1, fc2) of one TP rank
    linear_inputs = {"tp1": 64 + 64 + 64 + 256, "tp2": 64 + 64 / 2 + 64 + 256 / 2, "tp2_sp": 64 + 64 / 2 + 64 + 256 / 2}
    for key, per_token in linear_inputs.items():
        # tensorwise keeps the float8 cast (1 byte) of each linear's input where the bf16 layer keeps
        # the bf16 input (2 bytes); where a bf16 tensor is kept anyway for another op (the norm's
        # output for its own backward) the float8 copy comes on top, so the saving is at most one
        # byte per linear-input element
        saving = bf16["activation_bytes_per_token"][key] - tw["activation_bytes_per_token"][key]
        assert 0 < saving <= per_token
        # rowwise saves the high-precision input for its backward casts: what the bf16 layer saves
        assert rw["activation_bytes_per_token"][key] == bf16["activation_bytes_per_token"][key]
        # and a checkpointed layer keeps its bf16 input whatever runs inside
        assert tw["checkpoint_bytes_per_token"][key] == bf16["checkpoint_bytes_per_token"][key]
    # per micro-batch, tensorwise keeps no float8 copy of a weight (its backward casts the
    # parameter again with the forward's scale): only the scales, a few bytes per linear
    weights = 64 * 3 * 64 + 64 * 64 + 2 * 64 * 256
    for key in ("tp1", "tp2"):
        assert 0 < tw["activation_constant_bytes"][key] < 64 < weights / 2
    assert rw["activation_constant_bytes"]["tp1"] == 0


def test_each_recipe_is_slowed_by_its_own_sustained_chain(profile_dir):
    """A float8 chain measured at the power cap ('sustained.fp8.<recipe>') slows that recipe's
    tables by its own factor; the bf16 tables and an unmeasured recipe take the bf16 one."""
    d = _model(profile_dir)
    fresh = profiles.parse_model(d)
    d["sustained"] = {"slowdown": 1.2, "fp8": {"tensorwise": {"slowdown": 1.05}}}
    slowed = profiles.parse_model(d)
    for table, factor in ((lambda p: p.bf16_layer_time, 1.2), (lambda p: p.fp8["rowwise"].time, 1.2),
                          (lambda p: p.fp8["tensorwise"].time, 1.05)):
        f0, b0 = table(fresh)[(1, False)]
        f1, b1 = table(slowed)[(1, False)]
        assert f1.per_token_s == pytest.approx(factor * f0.per_token_s)
        assert b1.per_token_s == pytest.approx(factor * b0.per_token_s)
    d["sustained"] = {"slowdown": 1.2, "fp8": {"blockwise": {"slowdown": 1.05}}}
    with pytest.raises(profiles.ProfileError, match="sustained.fp8.blockwise"):
        profiles.parse_model(d)


def test_search_reads_the_measured_fp8_tables(profile_dir, tmp_path, capsys):
    from search import run as search_run
    profiles.write_hardware(synthetic.hardware_profile(2, 2, synthetic.preset("h100")), profile_dir)
    out = tmp_path / "plan.json"
    search_run.main(["--memory-gb", "8", "--num-gpus", "2", "--profile-dir", profile_dir, "--no-plot", "--quiet",
                     "--output", str(out), "--fp8", "rowwise", "--model-family", "gpt2", *MODEL])
    assert os.path.exists(out) and "wrote" in capsys.readouterr().out


def test_without_torchao_fp8_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import profile_model
    finally:
        sys.path.pop(0)
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")] + ["torchao"]:
        monkeypatch.setitem(sys.modules, name, None)  # import torchao now raises ImportError
    with pytest.raises(SystemExit) as e:
        profile_model.main(["--out-dir", str(tmp_path), "--dtype", "bf16", "--micro-batch-sizes", "1", "2",
                            "--tp", "1", "--fp8", "tensorwise", *MODEL])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "torchao" in err and "--fp8" in err and "\n" not in err
    assert not os.path.exists(tmp_path / profiles.MODEL_FILE)
