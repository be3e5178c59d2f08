"""tools/benchmark.py on 2 gloo ranks: plans and baselines visited in rounds, results as JSON."""
import json
import os
import subprocess
import sys

import pytest

from tests.dist_utils import run_launched

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "64", "--make-vocab-size-divisible-by", "4"]


def test_rounds_and_json(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(ROOT, "tools", "benchmark.py")] + TINY + [
        "--global-plans", "tp=2,dp=ddp,gbs=4,chunks=2", "tp=1,dp=zero3,gbs=4,chunks=1",
        "--baselines", "ddp,fsdp2+ckpt", "--baseline-micro-batches", "1,2", "--iters", "2", "--warmup", "1",
        "--rounds", "2", "--baseline-global-batch", "8", "--out", str(out)]
    proc = run_launched(cmd, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.load(open(out))["results"]
    assert [r["name"] for r in results] == ["tp=2,dp=ddp,gbs=4,chunks=2", "tp=1,dp=zero3,gbs=4,chunks=1",
                                            "ddp", "fsdp2+ckpt"]
    for r in results:
        assert r["status"] == "ok" and r["rounds"] == 2 and len(r["times"]) == 4
        tokens = r["global_batch"] * 16  # samples x seq
        assert abs(r["tokens_per_s_per_gpu"] - tokens / r["iter_time_s"] / 2) < 1e-6 * r["tokens_per_s_per_gpu"]
    tried = {int(k): v for k, v in results[2]["tried"].items()}  # samples per GPU -> tokens/s/GPU
    assert 2 in tried and results[2]["global_micro_batch"] == 2 * max(tried, key=tried.get)  # the fastest, over 2 GPUs
    assert results[2]["global_batch"] == 8  # two micro-batches accumulated
    assert proc.stdout.count("[round 2]") == 4
    # each plan against the fastest baseline, overall and round by round
    gains = json.load(open(out))["speedups"]
    best = max(results[2:], key=lambda r: r["tokens_per_s_per_gpu"])
    for r in results[:2]:
        g = gains[r["name"]]
        assert g["over"] == best["name"] and len(g["per_round"]) == 2
        assert abs(g["ratio"] - r["tokens_per_s_per_gpu"] / best["tokens_per_s_per_gpu"]) < 1e-9
        assert f"{r['name']}: {g['ratio']:.3f}x the fastest baseline ({best['name']}), per round" in proc.stdout


def test_unknown_baseline_is_one_line(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py")] + TINY + ["--baselines", "fsdp3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--baselines 'fsdp3'" in proc.stderr


def test_baseline_takes_the_fastest_size_that_fits(monkeypatch):
    """Sizes are tried from the largest down: 8 does not fit, 4 fits, 2 is faster, 1 is slower
    than 2 and ends the search."""
    import torch
    from megatron_galvatron.benchmark import runner
    from megatron_galvatron.model.config import GPTConfig
    cfg = GPTConfig(num_layers=1, hidden_size=16, num_attention_heads=2, seq_length=8, vocab_size=32,
                    make_vocab_size_divisible_by=4)
    seconds = {4: 1.0, 2: 0.4, 1: 0.3, 16: 9.9}  # per step: 4 -> 32 tok/s, 2 -> 40, 1 -> 26.7
    seen = []

    def fake_timed(step, iters, warmup, device, states=None):
        n = runner.baseline_step.calls[-1]
        seen.append(n)
        if n == 8:
            raise torch.OutOfMemoryError("fake")
        return [seconds[n]] * iters

    def fake_step(model, opt, tokens, labels, autocast, device, chunks):
        pass

    def fake_build(spec, cfg, device, seed, bf16):
        return None, None, None

    real_randint = torch.randint

    def randint(lo, hi, size, generator=None):
        runner.baseline_step.calls.append(size[0])
        return real_randint(lo, hi, size, generator=generator)

    fake_step.calls = []
    monkeypatch.setattr(runner, "baseline_step", fake_step)
    monkeypatch.setattr(runner, "build_baseline", fake_build)
    monkeypatch.setattr(runner, "_timed", fake_timed)
    monkeypatch.setattr(runner.torch, "randint", randint)
    res = runner.run_baseline("ddp", cfg, torch.device("cpu"), 0, False, [1, 2, 4, 8], 3, 1)
    assert seen == [8, 4, 2, 1]
    assert res.status == "ok" and res.global_micro_batch == 2
    assert res.tried[8] == 0.0 and res.tried[2] == 2 * 8 / 0.4 and res.tried[1] == 8 / 0.3


def test_plan_variants_name_and_mode():
    from megatron_galvatron.plan import uniform
    from tools.benchmark import expand_variants
    eager, compiled = uniform(2, 2, global_bsz=4), uniform(2, 2, global_bsz=4)
    compiled.compile, compiled.predicted = True, {"iter_time_s": 1.0}
    runs = expand_variants([("a", eager), ("b", compiled)], ["plan", "eager", "compile"])
    assert [(n, p.compile) for n, p in runs] == [("a", False), ("a", False), ("a +compile", True),
                                                 ("b", True), ("b eager", False), ("b", True)]
    assert runs[3][1].predicted == {"iter_time_s": 1.0} and runs[4][1].predicted == {}
    assert eager.compile is False and compiled.compile is True  # the plans themselves are untouched


def test_per_round_ratios_use_each_rounds_own_median():
    from megatron_galvatron.benchmark.runner import Result, per_round, speedups
    # 2 rounds x 3 iterations; 100 tokens per GPU per iteration
    plan = Result("p", "ok", iter_time_s=1.0, tokens_per_s_per_gpu=100.0, rounds=2, times=[1.0, 0.9, 1.1, 1.2, 1.0, 1.3])
    base = Result("b", "ok", iter_time_s=2.0, tokens_per_s_per_gpu=50.0, rounds=2, times=[2.0, 2.0, 2.0, 2.5, 2.5, 2.5])
    slow = Result("s", "ok", iter_time_s=4.0, tokens_per_s_per_gpu=25.0, rounds=2, times=[4.0] * 6)
    oom = Result("o", "oom")
    assert per_round(plan) == [100.0, 100.0 / 1.2] and per_round(oom) == []
    g = speedups([plan, oom], [slow, base, oom])
    assert list(g) == ["p"] and g["p"]["over"] == "b" and g["p"]["ratio"] == 2.0
    assert g["p"]["per_round"] == [2.0, pytest.approx((100.0 / 1.2) / (100.0 / 2.5))]
    assert speedups([plan], [oom]) == {}


def test_results_are_written_as_each_configuration_finishes(tmp_path):
    """The JSON after each configuration holds every result so far and leaves out those not yet
    run, so a configuration that crashes the run later loses nothing measured before it."""
    from megatron_galvatron.benchmark.runner import Result
    from megatron_galvatron.model.config import GPTConfig
    from tools.benchmark import write_json
    cfg = GPTConfig(num_layers=1, hidden_size=16, num_attention_heads=2, seq_length=8, vocab_size=32,
                    make_vocab_size_divisible_by=4)
    out = tmp_path / "bench.json"
    done = [Result(name="plan.json", status="ok", iter_time_s=1.0), None,
            Result(name="fsdp2", status="oom")]
    write_json(str(out), cfg, 2, "cpu", {}, {}, done)
    got = json.load(open(out))
    assert [(r["name"], r["status"]) for r in got["results"]] == [("plan.json", "ok"), ("fsdp2", "oom")]
    assert got["world_size"] == 2 and got["model"]["hidden_size"] == 16
