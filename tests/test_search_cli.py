"""search/run.py end to end, and its one-line errors on bad input (run as a subprocess)."""
import json
import os
import subprocess
import sys

import pytest

from megatron_galvatron import plan as plan_mod
from search import _dp_core  # noqa: F401  (CI builds it; without it the searches below crawl)
from search import synthetic
from megatron_galvatron.model.config import GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = GPTConfig(family="llama", num_layers=8, hidden_size=1024, num_attention_heads=16, num_query_groups=4,
                ffn_hidden_size=2816, vocab_size=32000, seq_length=1024)
MODEL_FLAGS = ["--model-family", "llama", "--num-layers", "8", "--hidden-size", "1024", "--num-attention-heads", "16",
               "--num-query-groups", "4", "--ffn-hidden-size", "2816", "--vocab-size", "32000", "--seq-length", "1024"]


def run(args, module=False, cwd=ROOT):
    cmd = [sys.executable] + (["-m", "search.run"] if module else [os.path.join(ROOT, "search", "run.py")])
    return subprocess.run(cmd + args, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def prof_dir(tmp_path_factory):
    return synthetic.write_profiles(str(tmp_path_factory.mktemp("prof")), CFG, num_gpus=16, gpus_per_node=8)


def test_run_writes_a_plan_the_runtime_accepts(prof_dir, tmp_path):
    out = tmp_path / "plan.json"
    r = run(["--memory-gb", "20", "--num-gpus", "16", "--num-nodes", "2", "--profile-dir", prof_dir,
             "--output", str(out), "--global-batch-size", "64"] + MODEL_FLAGS, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    plan = plan_mod.load(str(out))
    plan.validate(CFG, 16)
    pred = plan.predicted
    assert set(pred) == {"iter_time_s", "tokens_per_s", "peak_mem_gb", "peak_alloc_gb"}
    assert len(pred["peak_mem_gb"]) == plan.pp_deg and max(pred["peak_mem_gb"]) <= 20
    # what the tensors need is less than what the allocator is predicted to hold
    assert all(a < r for a, r in zip(pred["peak_alloc_gb"], pred["peak_mem_gb"]))
    assert pred["tokens_per_s"] == pytest.approx(64 * 1024 / pred["iter_time_s"], rel=1e-4)
    assert "layer stage" in r.stdout and "top " in r.stdout and "tokens/s" in r.stdout
    png = tmp_path / "plan.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_run_as_module_with_restricted_space(prof_dir, tmp_path):
    out = tmp_path / "p.json"
    r = run(["--memory-gb", "30", "--num-gpus", "16", "--num-nodes", "2", "--profile-dir", prof_dir,
             "--output", str(out), "--global-batch-size-range", "16", "64", "--max-tp", "2", "--max-pp", "2",
             "--disable-sdp", "--disable-checkpoint", "--pipeline-type", "gpipe", "--sequence-parallel", "off",
             "--no-plot", "--quiet"] + MODEL_FLAGS, module=True)
    assert r.returncode == 0, r.stderr
    p = json.loads(out.read_text())
    assert p["pp_deg"] <= 2 and p["pipeline_type"] == "gpipe"
    assert p["global_bsz"] in (16, 32, 64)
    for s in p["layers"] + [p["vocab"]]:
        assert s["tp"] <= 2 and s["dp_type"] != "zero3" and not s["sp"] and not s.get("checkpoint", False)
    assert not (tmp_path / "p.png").exists()


def one_line_failure(r):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("search/run.py: error:")
    return lines[0]


BASE = ["--memory-gb", "20", "--num-gpus", "16", "--num-nodes", "2", "--no-plot", "--quiet"]


def test_missing_profile_dir(tmp_path):
    line = one_line_failure(run(BASE + ["--profile-dir", str(tmp_path / "none"), "--output",
                                        str(tmp_path / "p.json")] + MODEL_FLAGS))
    assert "does not exist" in line


def copy_profiles(src, dst, edit_file=None, edit=None):
    os.makedirs(dst, exist_ok=True)
    for name in ("hardware.json", "model.json"):
        with open(os.path.join(src, name)) as f:
            d = json.load(f)
        if name == edit_file:
            edit(d)
        with open(os.path.join(dst, name), "w") as f:
            json.dump(d, f)
    return dst


@pytest.mark.parametrize("edit_file, edit, words", [
    ("model.json", lambda d: d["layer"]["memory"].pop("activation_bytes_per_token"),
     "missing key 'layer.memory.activation_bytes_per_token'"),
    ("hardware.json", lambda d: d.pop("overlap"), "missing key 'overlap'"),
    ("hardware.json", lambda d: d.__setitem__("schema", "something/else"), "schema is 'something/else'"),
    ("model.json", lambda d: d["model"].__setitem__("num_layers", 80), "num_layers=80 but --num-layers is 8"),
])
def test_bad_profiles_fail_in_one_line(prof_dir, tmp_path, edit_file, edit, words):
    d = copy_profiles(prof_dir, str(tmp_path / "bad"), edit_file, edit)
    line = one_line_failure(run(BASE + ["--profile-dir", d, "--output", str(tmp_path / "p.json")] + MODEL_FLAGS))
    assert words in line


def test_impossible_budget_quotes_the_minimum(prof_dir, tmp_path):
    args = ["--memory-gb", "1", "--num-gpus", "16", "--num-nodes", "2", "--no-plot", "--quiet",
            "--profile-dir", prof_dir, "--output", str(tmp_path / "p.json")] + MODEL_FLAGS
    line = one_line_failure(run(args))
    assert "smallest budget that fits is" in line
    assert not (tmp_path / "p.json").exists()


def test_bad_flags(prof_dir, tmp_path):
    common = ["--profile-dir", prof_dir, "--output", str(tmp_path / "p.json"), "--no-plot", "--quiet"]
    line = one_line_failure(run(["--memory-gb", "20", "--num-gpus", "12", "--num-nodes", "5"] + common + MODEL_FLAGS))
    assert "--num-nodes" in line
    line = one_line_failure(run(["--memory-gb", "-3", "--num-gpus", "16"] + common + MODEL_FLAGS))
    assert "--memory-gb" in line
