"""A one-GPU machine searches with model.json alone: the shipped one-GPU example profile (an
H100, GPT 1.4B, no hardware.json) gives the plan and predicted time any measured network gives it."""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.path.join(ROOT, "examples", "profiles", "h100x1_gpt1p4b_seq2048")
MODEL = ["--model-family", "gpt2", "--num-layers", "24", "--hidden-size", "2048", "--num-attention-heads", "16",
         "--seq-length", "2048", "--vocab-size", "50304"]


def _search(tmp_path, *extra, profile=PROFILE, name="plan.json"):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "search", "run.py"), "--memory-gb", "70",
                           "--profile-dir", profile, "--output", str(out), "--no-plot", "--quiet"] + MODEL + list(extra),
                          capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])))
    return proc, out


def test_one_gpu_search_needs_no_hardware_profile(tmp_path):
    assert not os.path.exists(os.path.join(PROFILE, "hardware.json"))
    proc, out = _search(tmp_path, "--num-gpus", "1")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(out.read_text())
    assert plan["world_size"] == 1 and plan["pp_deg"] == 1
    assert all(layer["tp"] == 1 for layer in plan["layers"])
    # With any measured network the one-GPU plan must be the same: it sends nothing.
    with_hw = tmp_path / "with_hw"
    with_hw.mkdir()
    shutil.copy(os.path.join(PROFILE, "model.json"), with_hw)
    shutil.copy(os.path.join(ROOT, "examples", "profiles", "h200x2_llama7b_seq2048", "hardware.json"), with_hw)
    proc, out2 = _search(tmp_path, "--num-gpus", "1", profile=str(with_hw), name="plan_hw.json")
    assert proc.returncode == 0, proc.stderr
    other = json.loads(out2.read_text())
    assert other["layers"] == plan["layers"] and other["chunks"] == plan["chunks"]
    assert other["predicted"]["iter_time_s"] == plan["predicted"]["iter_time_s"]


def test_more_gpus_still_need_the_hardware_profile(tmp_path):
    proc, _ = _search(tmp_path, "--num-gpus", "2")
    assert proc.returncode == 2 and "hardware.json" in proc.stderr and "Traceback" not in proc.stderr
