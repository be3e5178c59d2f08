"""Check that training steps never make the host wait for the GPU, plan by plan.

    torchrun --nproc-per-node 2 tools/check_host_sync.py --model-family gpt2 --num-layers 4 \
        --hidden-size 1024 --num-attention-heads 16 --seq-length 1024 --vocab-size 32000 --bf16 \
        --global-plans tp=1,dp=zero3,gbs=8,chunks=2 pp=2,dp=ddp,gbs=8,chunks=4 [--plans plan.json]

Each plan trains ``--warmup`` steps (lazy initialisation, compilation), then ``--steps`` more
under CUDA's synchronisation check (megatron_galvatron/benchmark/host_sync.py). Rank 0 prints,
per plan, "no host synchronisation" or every synchronising call with the stack that made it, on
any rank. Exit code 1 when any plan synchronised. Needs CUDA.
"""
import os
import sys

import torch
import torch.distributed as dist

from megatron_galvatron.benchmark.host_sync import describe, host_syncs
from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.parallel_state import detect_device, init_distributed
from megatron_galvatron.model.config import config_from_args
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import setup, train_step
from megatron_galvatron.benchmark.plans import load_plans


def main() -> int:
    p = build_parser("Host synchronisation inside training steps")
    b = p.add_argument_group("check")
    b.add_argument("--plans", nargs="*", default=[], help="plan files, each run as it says")
    b.add_argument("--global-plans", nargs="*", default=[], help="uniform plans, e.g. tp=1,dp=zero2,gbs=16,chunks=2")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    with exit_on_user_error("check_host_sync.py"):
        device = detect_device(int(os.environ.get("LOCAL_RANK", "0")))
        if device.type != "cuda":
            raise UserError("the synchronisation check is CUDA's: run it on GPUs")
        rank, world = init_distributed(device)
        cfg = config_from_args(args)
        plans = load_plans(args.plans, args.global_plans, world, cfg.num_layers)
        if not plans:
            raise UserError("give --plans and/or --global-plans")
        for _, plan in plans:
            plan.validate(cfg, world_size=world)
        failed = False
        for name, plan in plans:
            args.train_iters = args.warmup + args.steps
            tr = setup(args, plan)
            for _ in range(args.warmup):
                train_step(tr)
            torch.cuda.synchronize()
            found = host_syncs(lambda: train_step(tr), args.steps)
            torch.cuda.synchronize()
            per_rank = [None] * world
            dist.all_gather_object(per_rank, found)
            if rank == 0:
                lines = [f"rank {r}: {describe(f, args.steps)}" for r, f in enumerate(per_rank) if f]
                compiled = " (compiled)" if plan.compile or args.compile else ""
                print(f"== {name}{compiled}: " + ("\n".join(lines) if lines else
                                                  f"no host synchronisation in {args.steps} steps on any rank"),
                      flush=True)
            failed |= any(per_rank)
            tr = None
    if dist.is_initialized():
        dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
