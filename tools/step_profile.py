"""Where the step's GPU time goes, for plans and baselines, from torch.profiler traces.

    torchrun --nproc-per-node 2 tools/step_profile.py --model-family gpt2 --num-layers 24 \
        --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 --vocab-size 50304 --bf16 \
        --global-plans "tp=1,dp=zero3,gbs=48,chunks=1" --baselines fsdp2 --baseline-micro-batch 24 \
        --attention-bench --out breakdown.txt

Each configuration runs ``--warmup`` steps, then ``--steps`` profiled ones; rank 0 prints the
time per kernel category, the top kernels and the GPU's idle gaps with the kernels around them
(megatron_galvatron/benchmark/breakdown.py). ``--launched-by "Memcpy HtoD"`` also prints which
host code launched matching GPU work (copies from host memory make the host wait).
``--attention-bench`` also times causal SDPA forward + backward at the model's shape under
each PyTorch kernel.
"""
import gc
import os

import torch
import torch.distributed as dist

from megatron_galvatron.benchmark.baselines import BaselineSpec, baseline_step, build_baseline
from megatron_galvatron.benchmark.breakdown import kernels_of, launchers, summarize
from megatron_galvatron.errors import exit_on_user_error
from megatron_galvatron.parallel_state import detect_device, init_distributed
from megatron_galvatron.profiling.hardware import time_repeated
from megatron_galvatron.model.config import config_from_args
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import setup, train_step
from megatron_galvatron.benchmark.plans import load_plans


def profile(step, warmup: int, steps: int, launched_by=()) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=bool(launched_by)) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return "\n".join([summarize(kernels_of(prof)).table(steps)] + [launchers(prof, p) for p in launched_by])


def attention_bench(cfg, batch: int, device) -> str:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    s, nh, hd = cfg.seq_length, cfg.num_attention_heads, cfg.head_dim
    flops = 4 * batch * nh * s * s * hd * 3.5 / 2  # fwd + bwd (2.5x fwd), causal half
    rows = [f"causal SDPA fwd+bwd, batch {batch}, heads {nh}, seq {s}, head dim {hd}, bf16, [s, b, h, d] strides"]
    q, k, v = (torch.randn(s, batch, nh, hd, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    g = torch.randn(batch, nh, s, hd, device=device, dtype=torch.bfloat16)
    for name, be in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        def run():
            with sdpa_kernel([be]):
                out = torch.nn.functional.scaled_dot_product_attention(
                    *(t.permute(1, 2, 0, 3) for t in (q, k, v)), is_causal=True)
            out.backward(g)
        try:
            ms = 1e3 * time_repeated(run, device, warmup=3, iters=10)
            rows.append(f"  {name:<10} {ms:8.2f} ms  {flops / ms / 1e9:7.1f} TFLOP/s")
        except RuntimeError as e:
            rows.append(f"  {name:<10} unavailable: {str(e).splitlines()[0][:100]}")
    return "\n".join(rows)


def main() -> None:
    p = build_parser("Kernel-time breakdown of training steps")
    b = p.add_argument_group("step profile")
    b.add_argument("--plans", nargs="*", default=[], help="plan files, each run as it says (compiled or not)")
    b.add_argument("--global-plans", nargs="*", default=[])
    b.add_argument("--baselines", default="")
    b.add_argument("--baseline-micro-batch", type=int, default=8, help="samples per GPU")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--steps", type=int, default=2)
    b.add_argument("--attention-bench", action="store_true")
    b.add_argument("--launched-by", nargs="*", default=[],
                   help='name parts of GPU work (e.g. "Memcpy HtoD") whose launching host code to print')
    b.add_argument("--out", default=None, help="also write the report here")
    args = p.parse_args()
    with exit_on_user_error("step_profile.py"):
        device = detect_device(int(os.environ.get("LOCAL_RANK", "0")))
        rank, world = init_distributed(device)
        cfg = config_from_args(args)
        report = []

        def emit(text):
            if rank == 0:
                print(text, flush=True)
                report.append(text)
                if args.out:  # rewritten after every configuration: a later failure keeps these
                    with open(args.out, "w") as f:
                        f.write("\n".join(report) + "\n")

        def release():
            gc.collect()  # FSDP state and gradient hooks hold the model in reference cycles
            torch.cuda.empty_cache()

        if args.attention_bench:
            emit(attention_bench(cfg, args.baseline_micro_batch, device))
        plans = load_plans(args.plans, args.global_plans, world, cfg.num_layers)
        for name, plan in plans:
            plan = plan.validate(cfg, world_size=world)
            args.train_iters = args.warmup + args.steps
            tr = setup(args, plan)
            compiled = plan.compile or args.compile
            emit(f"\n== plan {name} (attention {cfg.attention_backend}{', compiled' if compiled else ''})\n"
                 + profile(lambda: train_step(tr), args.warmup, args.steps, args.launched_by))
            tr = None
            release()
        for name in [n for n in args.baselines.split(",") if n]:
            model, opt, autocast = build_baseline(BaselineSpec.parse(name), cfg, device, args.seed, args.bf16)
            mbs = args.baseline_micro_batch
            tokens = torch.randint(0, cfg.vocab_size, (mbs, cfg.seq_length + 1), device=device)
            emit(f"\n== baseline {name}, {mbs} per GPU\n" + profile(
                lambda: baseline_step(model, opt, tokens[:, :-1], tokens[:, 1:], autocast, device),
                args.warmup, args.steps, args.launched_by))
            model = opt = tokens = None
            release()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
