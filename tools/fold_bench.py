"""Per micro-batch backward of a chain of LLaMA-7B layers: bf16 module accumulating its bf16
gradient in place (what profile_model times) vs the runtime's replicated unit (bf16 copy of fp32
masters, GradBucket folding each bf16 gradient into the fp32 buffer). Interleaved, soaked.

    python tools/fold_bench.py          # one GPU

Each replicated call enters GradBucket.compute(), which refreshes the bf16 copies (6 bytes per
parameter); the runtime does that once per step, so that part of the difference is not the fold.
Output of the run docs/ quotes: results/h200x1_llama7b/gradient_fold/fold_bench.txt."""
import time
from contextlib import ExitStack

import torch

from megatron_galvatron.data_parallel.ddp import GradBucket
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.profiling.model import ModelProfiler, ModelSettings
from megatron_galvatron.profiling.shards import ShardGroups


def main():
    cfg = GPTConfig(family="llama", num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=32,
                    ffn_hidden_size=11008, seq_length=2048, vocab_size=32000, attention_backend="cudnn")
    dev = torch.device("cuda")
    prof = ModelProfiler(cfg, dev, ModelSettings([1], [2048], [1]))
    sh = ShardGroups(1)
    N = 4
    bf = [prof.layer(sh, 1, False).to(torch.bfloat16) for _ in range(N)]
    rep = [prof.layer(sh, 1, False) for _ in range(N)]
    buckets = [GradBucket(m, None, bf16=True) for m in rep]

    def step_bf(x):
        y = x
        for m in bf:
            y = m(y)
        y.backward(torch.ones_like(y))

    def step_rep(x):
        with ExitStack() as st:
            for b in buckets:
                st.enter_context(b.compute())
            y = x
            for m in rep:
                y = m(y)
            y.backward(torch.ones_like(y))

    def timed(fn, x, n):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(n):
            fn(x)
        e1.record(); torch.cuda.synchronize()
        return e0.elapsed_time(e1) / n

    for mb in (1, 2, 4):
        x = torch.randn(2048, mb, 4096, device=dev, dtype=torch.bfloat16, requires_grad=True)
        for fn in (step_bf, step_rep):
            fn(x); fn(x)
        end = time.time() + 8
        while time.time() < end:
            step_bf(x); step_rep(x)
        a, b = [], []
        for _ in range(6):
            a.append(timed(step_bf, x, 5)); b.append(timed(step_rep, x, 5))
        a.sort(); b.sort()
        ma, mbb = a[3], b[3]
        print(f"mb {mb}: bf16 module {ma:.3f} ms, replicated unit {mbb:.3f} ms per {N} layers fwd+bwd; "
              f"difference {mbb - ma:+.3f} ms = {(mbb - ma) / N:+.3f} ms per layer "
              f"({(mbb - ma) / N * 1e-3:.2e} s)", flush=True)
    params = sum(p.numel() for p in rep[0].parameters())
    print("params per layer", params)


if __name__ == "__main__":
    main()
