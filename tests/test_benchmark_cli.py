"""tools/benchmark.py on 2 gloo ranks: plans and baselines visited in rounds, results as JSON."""
import json
import os
import subprocess
import sys

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
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.load(open(out))["results"]
    assert [r["name"] for r in results] == ["tp=2,dp=ddp,gbs=4,chunks=2", "tp=1,dp=zero3,gbs=4,chunks=1",
                                            "ddp", "fsdp2+ckpt"]
    for r in results:
        assert r["status"] == "ok" and r["rounds"] == 2 and len(r["times"]) == 4
        tokens = r["global_batch"] * 16  # samples x seq
        assert abs(r["tokens_per_s_per_gpu"] - tokens / r["iter_time_s"] / 2) < 1e-6 * r["tokens_per_s_per_gpu"]
    assert results[2]["micro_batch"] == 4  # the largest of 1, 2 per GPU, over 2 GPUs
    assert results[2]["global_batch"] == 8  # two micro-batches accumulated
    assert proc.stdout.count("[round 2]") == 4


def test_unknown_baseline_is_one_line(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py")] + TINY + ["--baselines", "fsdp3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--baselines 'fsdp3'" in proc.stderr
