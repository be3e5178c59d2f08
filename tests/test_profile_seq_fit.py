"""The layer's fits in sequence length: the fit itself on synthetic points, a real CPU profile over
three lengths, and the cost model and the search at a length the profile did not measure."""
import copy
import json
import os
import subprocess
import sys

import pytest

from megatron_galvatron import plan as plan_mod
from megatron_galvatron import profile_format as pf
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import LayerStrategy
from megatron_galvatron.profiling import fit
from search import synthetic
from search.comm import Network
from search.cost_model import CostModel
from search.predict import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINTS = [(mb, s) for mb in (1, 2, 4) for s in (1024, 2048, 4096, 8192)]


def test_time_fit_recovers_the_terms_exactly():
    c, a, b = 2e-4, 3e-7, 5e-11
    e = fit.seq_time_entry([[mb, s, c + mb * (a * s + b * s * s)] for mb, s in POINTS])
    assert e["intercept_s"] == pytest.approx(c, rel=1e-9)
    assert e["linear_s"] == pytest.approx(a, rel=1e-9)
    assert e["quadratic_s"] == pytest.approx(b, rel=1e-9)
    assert e["max_rel_error"] < 1e-9


def test_time_fit_without_intercept_or_quadratic_term_keeps_it_at_zero():
    e = fit.seq_time_entry([[mb, s, mb * 3e-7 * s] for mb, s in POINTS])  # a linear layer, nothing fixed
    assert (e["intercept_s"], e["quadratic_s"]) == (0.0, 0.0) and e["linear_s"] == pytest.approx(3e-7, rel=1e-12)


@pytest.mark.parametrize("quad", [0.0, 64.0])  # flash attention keeps no s^2 bytes; the math path does
@pytest.mark.parametrize("pos", [0.0, 64.0])   # bytes per position whatever the micro-batch (RoPE tables)
def test_bytes_fit_finds_the_square_term_only_where_it_is(quad, pos):
    const, lin = 3 * 2 ** 20, 2 ** 14 + 8
    e = fit.seq_bytes_entry([[mb, s, const + pos * s + mb * (lin * s + quad * s * s)] for mb, s in POINTS])
    assert e == {"constant_bytes": const, "position_bytes": pos, "linear_bytes": lin, "quadratic_bytes": quad}


def test_fits_never_go_negative():
    # noise that would pull an unconstrained least-squares intercept below zero
    pts = [[1, s, 1e-6 * s * (1 + (0.03 if k % 2 else -0.03))] for k, s in enumerate((512, 1024, 2048, 4096))]
    e = fit.seq_time_entry(pts)
    assert min(e["intercept_s"], e["linear_s"], e["quadratic_s"]) >= 0.0 and e["max_rel_error"] < 0.1


# ---------------------------------------------------------------- a CPU profile over three lengths

LENGTHS = (128, 256, 512)


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("seqprof"))
    cmd = [sys.executable, "tools/profile_model.py", "--out-dir", out, "--quiet", "--model-family", "llama",
           "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2", "--ffn-hidden-size", "64",
           "--vocab-size", "64", "--seq-length", "128", "--seq-lengths", *map(str, LENGTHS),
           "--micro-batch-sizes", "1", "2", "--tp", "1", "2", "--warmup", "1", "--iters", "2", "--dtype", "bf16"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    with open(os.path.join(out, pf.MODEL_FILE)) as f:
        return out, json.load(f), r.stdout


def test_profile_records_the_fits_and_they_read_back(cpu_profile):
    out, d, stdout = cpu_profile
    assert d["schema"] == pf.MODEL_SCHEMA and d["sequence"]["seq_lengths"] == list(LENGTHS)
    # CPU SDPA (the flash kernel) keeps only per-row statistics, no score matrix
    assert d["sequence"]["activation"] == "linear"
    assert d["layer"]["memory"]["activation_seq_fit"]["tp1"]["quadratic_bytes"] == 0.0
    assert "activation memory linear in the length" in stdout
    m = pf.parse_model(d, out)
    assert m.seq_lengths == LENGTHS and m.seq_activation == "linear" and set(m.seq_fits) == {"layer", "bf16"}
    for key in ("tp1", "tp2", "tp2_sp"):
        k = (int(key[2]), key.endswith("_sp"))
        entry = d["layer"]["time"][key]
        fwd, bwd, ckpt = m.seq_fits["layer"].time[k]
        assert fwd.linear_s == entry["fwd"]["seq_fit"]["linear_s"] and ckpt is not None
        assert bwd.quadratic_s == entry["bwd"]["seq_fit"]["quadratic_s"]
        # saved bytes are exact counts: the fit must give every measured point back
        a = d["layer"]["memory"]["activation_seq_fit"][key]
        assert m.seq_fits["layer"].activation[k].linear_bytes == a["linear_bytes"]
        bf16 = d["layer"]["bf16"]
        for table, fits in ((d["layer"]["memory"], a), (bf16, bf16["activation_seq_fit"][key])):
            for mb, s, saved in table["points"][key]["saved_bytes"]:
                assert fits["constant_bytes"] + fits["position_bytes"] * s + mb * (
                    fits["linear_bytes"] * s + fits["quadratic_bytes"] * s * s) == pytest.approx(saved, rel=1e-9)
        assert sorted({(p[0], p[1]) for p in entry["fwd"]["points"]}) == sorted(
            (mb, s) for mb in (1, 2) for s in LENGTHS)


def test_search_beyond_the_profiled_lengths_of_a_real_profile(cpu_profile, tmp_path):
    out, d, _ = cpu_profile
    pf.write_hardware(synthetic.hardware_profile(2, 2), out)
    r = run_search(["--memory-gb", "8", "--num-gpus", "2", "--profile-dir", out, "--output", str(tmp_path / "p.json"),
                    "--seq-length", "2048", "--no-plot", "--quiet", "--global-batch-size", "2", "--model-family",
                    "llama", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
                    "--ffn-hidden-size", "64", "--vocab-size", "64"], str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "--seq-length 2048 extrapolated" in r.stderr and "profiled at 128, 256, 512" in r.stderr
    prof = pf.load_profiles(out, 2048)[1]
    fwd = d["layer"]["bf16"]["time"]["tp1"]["fwd"]["seq_fit"]
    assert prof.bf16_layer_fits(1, False)[0].per_token_s == pytest.approx(
        fwd["linear_s"] + fwd["quadratic_s"] * 2048, rel=1e-12)
    act = d["layer"]["memory"]["activation_seq_fit"]["tp1"]  # the autocast tables, which keep a constant
    assert prof.layer_constant(1, False) == pytest.approx(act["constant_bytes"] + act["position_bytes"] * 2048)
    assert prof.activation_per_token(1, False) == pytest.approx(act["linear_bytes"] + act["quadratic_bytes"] * 2048)


def test_two_lengths_need_two_micro_batch_sizes(tmp_path):
    r = subprocess.run([sys.executable, "tools/profile_model.py", "--out-dir", str(tmp_path), "--seq-lengths", "64",
                        "128", "--micro-batch-sizes", "1", "--num-layers", "1", "--hidden-size", "32",
                        "--num-attention-heads", "2", "--vocab-size", "64", "--seq-length", "64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2 and "--micro-batch-sizes" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- cost model and search at another length

CFG = GPTConfig(family="llama", num_layers=4, hidden_size=1024, num_attention_heads=16, num_query_groups=4,
                ffn_hidden_size=2816, vocab_size=32000, seq_length=4096)
FLAGS = ["--model-family", "llama", "--num-layers", "4", "--hidden-size", "1024", "--num-attention-heads", "16",
         "--num-query-groups", "4", "--ffn-hidden-size", "2816", "--vocab-size", "32000"]
C, A, B = 1.5e-4, 2e-8, 4e-12            # fwd seconds: C + mb * (A s + B s^2), at tp1; bwd twice that
LIN, QUAD, CONST = 30000.0, 0.0, 5e5     # activation bytes: CONST + mb * (LIN s + QUAD s^2), at tp1
SLOW = 1.1                                # sustained slowdown, applied to the fits as to every table


def with_fits(d):
    """The synthetic profile with sequence fits (scaled by 1/tp per key) and bf16 tables holding them."""
    d = copy.deepcopy(d)
    layer = d["layer"]
    acts = {}
    for key, entry in layer["time"].items():
        tp = int(key[2:].split("_")[0])
        for name, k in (("fwd", 1.0), ("bwd", 2.0)):
            entry[name]["seq_fit"] = {"intercept_s": k * C, "linear_s": k * A / tp, "quadratic_s": k * B / tp}
        acts[key] = {"constant_bytes": CONST, "position_bytes": 0.0, "linear_bytes": LIN / tp, "quadratic_bytes": QUAD}
    layer["memory"]["activation_seq_fit"] = acts
    layer["bf16"] = {"time": copy.deepcopy(layer["time"]), "activation_bytes_per_token":
                     dict(layer["memory"]["activation_bytes_per_token"]), "activation_seq_fit": copy.deepcopy(acts),
                     "checkpoint_bytes_per_token": dict(layer["memory"]["checkpoint_bytes_per_token"])}
    d["sequence"] = {"seq_lengths": [4096, 8192], "activation": "linear"}
    d["sustained"] = {"slowdown": SLOW}
    return d


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fits"))
    pf.write_hardware(synthetic.hardware_profile(8, 8), out)
    pf.write_model(with_fits(synthetic.model_profile(CFG)), out)
    return out


@pytest.mark.parametrize("tp,mb", [(1, 1), (2, 2)])
def test_cost_model_at_an_unprofiled_length_is_the_fits(fit_dir, tp, mb):
    hw, prof = pf.load_profiles(fit_dir)
    seq = 32768
    at, note = prof.for_seq_length(seq)
    assert "extrapolated" in note and "4096, 8192" in note
    assert prof.model["seq_length"] == 4096 and at.model["seq_length"] == seq  # the loaded one is left as it was
    cfg = GPTConfig(**{**CFG.to_dict(), "seq_length": seq, "max_position_embeddings": seq})
    cost = CostModel(cfg, at, Network(hw, 8, 8))
    s = LayerStrategy(tp=tp, dp_type="ddp")
    fwd, bwd = cost.layer_compute(s, tp, mb)  # a stage of tp ranks: dp 1, all mb samples on each
    hand_fwd = SLOW * (C + mb * (A * seq + B * seq * seq) / tp)
    assert fwd == pytest.approx(hand_fwd, rel=1e-12) and bwd == pytest.approx(2 * hand_fwd, rel=1e-12)
    kept = cost.layer_memory(s, tp, mb).activation
    assert kept == pytest.approx(mb * seq * (LIN + QUAD * seq) / tp, rel=1e-12)  # bf16 units: no constant


def run_search(args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, "search", "run.py")] + args, cwd=cwd,
                          capture_output=True, text=True, timeout=240)


def test_search_at_32k_uses_the_fits_and_says_so(fit_dir, tmp_path):
    r = run_search(["--memory-gb", "80", "--num-gpus", "8", "--profile-dir", fit_dir, "--output",
                    str(tmp_path / "plan.json"), "--global-batch-size", "8", "--seq-length", "32768", "--no-plot",
                    "--quiet"] + FLAGS, str(tmp_path))
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "sequence-length fits" in line]
    assert len(notes) == 1 and "--seq-length 32768 extrapolated" in notes[0] and "4096, 8192" in notes[0]
    # pricing the plan again from the directory (as tools/benchmark.py --profile-dir does) takes the same fits
    plan = plan_mod.load(str(tmp_path / "plan.json"))
    cfg = GPTConfig(**{**CFG.to_dict(), "seq_length": 32768, "max_position_embeddings": 32768})
    # (the plan file rounds its prediction)
    assert predict(plan, cfg, fit_dir).iter_time_s == pytest.approx(plan.predicted["iter_time_s"], rel=1e-4)


def test_search_at_another_length_without_fits_is_one_line(tmp_path):
    synthetic.write_profiles(str(tmp_path), CFG, num_gpus=8, gpus_per_node=8)
    r = run_search(["--memory-gb", "80", "--num-gpus", "8", "--profile-dir", str(tmp_path), "--output",
                    str(tmp_path / "plan.json"), "--seq-length", "32768", "--no-plot"] + FLAGS, str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "seq_length=4096" in r.stderr and "--seq-lengths" in r.stderr
