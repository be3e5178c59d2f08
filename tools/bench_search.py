"""Time the plan search against GPU count on synthetic H100 profiles (the table in docs/search.md).

    python tools/bench_search.py                       # 8 ... 4096 GPUs; LLaMA 7B, 70B and a 405B shape
    python tools/bench_search.py --gpus 8 64 --models llama-7b

Each point writes synthetic profiles (8 GPUs per node, search.synthetic's h100 preset) and runs
`python search/run.py` in a fresh process, so "total s" includes start-up and profile loading;
"search s" is the search itself as run.py reports it (both wall clock); "CPU s" is the
process's user + system time, which other jobs on a shared machine do not inflate.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

from search import synthetic
from megatron_galvatron.model.config import GPTConfig

MODELS = {
    "llama-7b": GPTConfig(family="llama", num_layers=32, hidden_size=4096, num_attention_heads=32,
                          num_query_groups=32, ffn_hidden_size=11008, vocab_size=32000, seq_length=4096),
    "llama-70b": GPTConfig(family="llama", num_layers=80, hidden_size=8192, num_attention_heads=64,
                           num_query_groups=8, ffn_hidden_size=28672, vocab_size=32000, seq_length=4096),
    # LLaMA 3.1 405B's layer shape (its vocabulary too)
    "llama-405b": GPTConfig(family="llama", num_layers=126, hidden_size=16384, num_attention_heads=128,
                            num_query_groups=8, ffn_hidden_size=53248, vocab_size=128256, seq_length=4096),
}


def model_flags(cfg: GPTConfig):
    return ["--model-family", cfg.family, "--num-layers", str(cfg.num_layers), "--hidden-size", str(cfg.hidden_size),
            "--num-attention-heads", str(cfg.num_attention_heads), "--num-query-groups", str(cfg.num_query_groups),
            "--ffn-hidden-size", str(cfg.ffn_hidden_size), "--vocab-size", str(cfg.vocab_size),
            "--seq-length", str(cfg.seq_length)]


def bench(name: str, gpus: int, memory_gb: float, workdir: str, threads=()):
    cfg = MODELS[name]
    nodes = max(1, gpus // 8)
    prof = synthetic.write_profiles(os.path.join(workdir, f"{name}-{gpus}"), cfg, gpus, gpus // nodes)
    out = os.path.join(workdir, f"{name}-{gpus}.json")
    cmd = [sys.executable, "-m", "search.run", "--memory-gb", str(memory_gb),
           "--num-gpus", str(gpus), "--num-nodes", str(nodes), "--profile-dir", prof, "--output", out,
           "--quiet", "--no-plot"] + model_flags(cfg)
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd + list(threads), capture_output=True, text=True)
    total, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if r.returncode:
        last = r.stderr.strip().splitlines()[-1]
        need = re.search(r"smallest budget that fits is ([0-9.]+) GB", last)
        return {"model": name, "gpus": gpus, "nodes": nodes, "total_s": total, "cpu_s": cpu,
                "error": f"no plan fits in {memory_gb:g} GB (needs {need.group(1)} GB)" if need else last}
    m = re.search(r"searched (\d+) candidates in ([0-9.]+) s: (\d+) solved \((\d+) DP runs\)", r.stdout)
    best = re.search(r"^ 1 +([0-9]+) +([0-9.]+) +(\d+) +(\d+) +(\d+)", r.stdout, re.M)
    return {"model": name, "gpus": gpus, "nodes": nodes, "candidates": int(m.group(1)), "search_s": float(m.group(2)),
            "solved": int(m.group(3)), "dp_runs": int(m.group(4)), "total_s": total, "cpu_s": cpu,
            "tokens_per_s": int(best.group(1)), "pp": int(best.group(3)), "bsz": int(best.group(4))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(MODELS))
    p.add_argument("--memory-gb", type=float, default=40.0)
    p.add_argument("--threads", type=int, default=None, help="search/run.py --threads (default: its own)")
    args = p.parse_args()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    print("| model | GPUs | nodes | candidates | solved | DP runs | search s | total s | CPU s | best tokens/s | pp | batch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            for g in args.gpus:
                r = bench(name, g, args.memory_gb, d, threads)
                if "error" in r:
                    print(f"| {name} | {g} | {r['nodes']} | | | | | {r['total_s']:.2f} | {r['cpu_s']:.2f} | "
                          f"{r['error']} | | |", flush=True)
                    continue
                print(f"| {name} | {g} | {r['nodes']} | {r['candidates']} | {r['solved']} | {r['dp_runs']} | "
                      f"{r['search_s']:.2f} | {r['total_s']:.2f} | {r['cpu_s']:.2f} | {r['tokens_per_s']:,} | "
                      f"{r['pp']} | {r['bsz']} |", flush=True)


if __name__ == "__main__":
    main()
