"""Benchmark searched / hand-written plans against plain PyTorch DDP and FSDP2 in one run.

    torchrun --nproc-per-node 2 tools/benchmark.py --model-family gpt2 --num-layers 24 \
        --hidden-size 2048 --num-attention-heads 16 --seq-length 2048 --vocab-size 50304 --bf16 \
        --plans plan.json --global-plans "tp=1,dp=zero2,gbs=16,chunks=2" --out results.json

Every configuration trains the same model on the same GPUs; each line of the printed table
gives tokens/s/GPU, TFLOP/s/GPU, MFU, peak allocated memory and, for plans, the predicted
iteration time and memory next to the measured ones.
"""
import dataclasses
import json
import os

import torch.distributed as dist

from megatron_galvatron.benchmark.baselines import BaselineSpec
from megatron_galvatron.benchmark.plans import load_plans
from megatron_galvatron.benchmark.runner import (as_dict, describe_speedups, run_baseline, run_plan, speedups,
                                                 table)
from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.flag_types import int_in, nonempty, nonneg_int
from megatron_galvatron.output_paths import check_output_file
from megatron_galvatron.plan import MAX_GLOBAL_BSZ
from megatron_galvatron.parallel_state import detect_device, init_distributed
from megatron_galvatron.model.config import config_from_args
from megatron_galvatron.training.arguments import build_parser


def expand_variants(plans, variants):
    """(name, plan) per plan and variant: "plan" runs it as it says, "eager" / "compile" with its
    layers so; a run in the other mode than the plan file is named for it and drops the file's
    prediction (made for the other mode)."""
    runs = []
    for name, plan in plans:
        for v in variants:
            compiled = plan.compile if v == "plan" else v == "compile"
            suffix = {(True, False): " +compile", (False, True): " eager"}.get((compiled, plan.compile), "")
            run = dataclasses.replace(plan, compile=compiled)
            if compiled != plan.compile:
                run.predicted = {}
            runs.append((name + suffix, run))
    return runs


def price(plan, cfg, args, loaded):
    """The plan with this run's prediction: compiled plans on the compiled profiles. `loaded`
    keeps each profile directory's parsed profiles for the next plan."""
    from search.predict import predict
    from megatron_galvatron.profile_format import load_profiles
    prof = args.compile_profile_dir if plan.compile and args.compile_profile_dir else args.profile_dir
    if prof and prof not in loaded:
        loaded[prof] = load_profiles(prof, cfg.seq_length)
    if prof and loaded[prof][1].compiled == plan.compile:
        plan.predicted = predict(plan, cfg, loaded[prof]).plan_fields()
    elif prof:  # a prediction for the other mode would mislead
        plan.predicted = {}
    return plan


def bounds(cfg, args, loaded):
    """The compute bound (search/bound.py) on each profile given, by directory."""
    from search.bound import compute_bound
    from megatron_galvatron.profile_format import check_model_matches, load_profiles
    from megatron_galvatron.training.metrics import peak_flops_of
    out = {}
    for prof in (args.profile_dir, args.compile_profile_dir):
        if not prof:
            continue
        if prof not in loaded:
            loaded[prof] = load_profiles(prof, cfg.seq_length)
        hw, model = loaded[prof]
        check_model_matches(model, cfg.to_dict())
        b = compute_bound(model, cfg.num_layers, cfg.flops_per_token())
        out[prof] = dict(b.as_dict(peak_flops_of(hw.gpu_name)), compiled=model.compiled)
    return out


def describe_bounds(found) -> str:
    lines = []
    for prof, b in found.items():
        mfu = f", MFU {b['mfu']:.3f}" if b["mfu"] else ""
        lines.append(f"compute bound ({'compiled' if b['compiled'] else 'eager'} layers, {prof}): "
                     f"{b['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU{mfu}: the model's math alone at the "
                     f"sustained clock, no communication, optimizer or bubbles (search/bound.py)")
    return "\n".join(lines)


def write_json(path: str, cfg, world: int, device, found, gains, results) -> None:
    """Every result so far (configurations not yet run are left out)."""
    with open(path, "w") as f:
        json.dump({"model": vars(cfg), "world_size": world, "device": str(device),
                   "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                   "compute_bound": found, "speedups": gains,
                   "results": [as_dict(r) for r in results if r is not None]}, f, indent=2, default=str)


def micro_batches(text: str):
    """--baseline-micro-batches: a comma list of positive integers."""
    sizes = [x for x in text.split(",") if x]
    if not sizes or not all(x.isascii() and x.isdigit() and 1 <= int(x) <= MAX_GLOBAL_BSZ for x in sizes):
        raise UserError(f"--baseline-micro-batches {text!r}: a comma list of positive integers, e.g. 1,2,4")
    return [int(x) for x in sizes]


def benchmark_parser():
    """pretrain_gpt.py's flags (the model, and how plans given by flags train) and the benchmark's."""
    p = build_parser("Benchmark plans against plain PyTorch DDP and FSDP2")
    b = p.add_argument_group("benchmark")
    b.add_argument("--plans", type=nonempty, nargs="*", default=[], help="plan files (search output or hand-written)")
    b.add_argument("--global-plans", type=nonempty, nargs="*", default=[],
                   help="uniform plans, e.g. tp=1,dp=zero2,gbs=16,chunks=2")
    b.add_argument("--baselines", default="ddp,fsdp2",
                   help="comma list of ddp / fsdp2 / plain (one GPU, no wrapper), each optionally +ckpt, +compile, "
                        "+fp8 (torchao float8 linears in the blocks), +ourmodel, e.g. fsdp2+compile+fp8 "
                        "(see megatron_galvatron/benchmark/baselines.py)")
    b.add_argument("--baseline-micro-batches", default="1,2,4,8,16")
    b.add_argument("--baseline-global-batch", type=int_in(0, MAX_GLOBAL_BSZ), default=0,
                   help="baselines accumulate micro-batches up to this many samples per step "
                        "(DDP no_sync / FSDP2 without gradient sync until the last); 0 = one micro-batch")
    b.add_argument("--iters", type=int_in(1, 10 ** 6), default=10)
    b.add_argument("--warmup", type=nonneg_int, default=3)
    b.add_argument("--plan-variants", default="plan",
                   help="comma list of plan / eager / compile: run every plan as it says, or with its layers "
                        "eager, or compiled (torch.compile of each transformer layer, as pretrain_gpt.py --compile)")
    b.add_argument("--rounds", type=int_in(1, 1000), default=1,
                   help="visit every configuration this many times, in turn")
    b.add_argument("--out", type=nonempty, default=None, help="write all results as JSON here")
    b.add_argument("--profile-dir", type=nonempty, default=None,
                   help="price every eager plan with the cost model on these profiles")
    b.add_argument("--compile-profile-dir", type=nonempty, default=None,
                   help="price plans that run compiled on these profiles (profile_model.py --compile); without "
                        "it they are priced on --profile-dir only if its profile is compiled")
    return p


def main(argv=None) -> None:
    args = benchmark_parser().parse_args(argv)
    with exit_on_user_error("benchmark.py"):
        mbs = micro_batches(args.baseline_micro_batches)
        if args.out:
            check_output_file("--out", args.out)  # before the runs, not after them
        device = detect_device(int(os.environ.get("LOCAL_RANK", "0")))
        rank, world = init_distributed(device)
        cfg = config_from_args(args)
        plans = load_plans(args.plans, args.global_plans, world, cfg.num_layers)
        variants = [v for v in args.plan_variants.split(",") if v]
        if not variants or set(variants) - {"plan", "eager", "compile"}:
            raise UserError(f"--plan-variants {args.plan_variants!r}: a comma list of plan, eager, compile")
        for _, plan in plans:
            plan.validate(cfg, world_size=world)
        loaded = {}
        runs = [(name, price(plan, cfg, args, loaded)) for name, plan in expand_variants(plans, variants)]
        found = bounds(cfg, args, loaded)
        args.compile = False  # each plan says whether its layers are compiled
        baselines = [k for k in args.baselines.split(",") if k]
        for name in baselines:
            BaselineSpec.parse(name, world)  # every name checked before the first one runs
        # Rounds visit every configuration in turn, so that slow drifts of the machine (its
        # power cap, other tenants) fall on all of them alike; each result's median covers
        # the timed iterations of all rounds.
        results = [None] * (len(runs) + len(baselines))

        def report(rnd: int, i: int) -> None:
            """One finished configuration: its line, and the JSON so far, which a configuration that
            crashes later (a kernel or compile error ends the run) leaves in place."""
            if rank != 0:
                return
            print(f"[round {rnd + 1}] " + table(results[i:i + 1]).splitlines()[-1], flush=True)
            if args.out:
                write_json(args.out, cfg, world, device, found, {}, results)

        for rnd in range(args.rounds):
            for i, (name, plan) in enumerate(runs):
                results[i] = run_plan(name, args, plan, args.iters, args.warmup, results[i])
                report(rnd, i)
            for j, name in enumerate(baselines):
                i = len(runs) + j
                results[i] = run_baseline(name, cfg, device, args.seed, args.bf16, mbs, args.iters, args.warmup,
                                          results[i], args.baseline_global_batch)
                report(rnd, i)
        gains = speedups(results[:len(runs)], results[len(runs):])
        if rank == 0:
            print("\n" + table(results), flush=True)
            if gains:
                print(describe_speedups(gains), flush=True)
            if found:
                print(describe_bounds(found), flush=True)
            if args.out:
                write_json(args.out, cfg, world, device, found, gains, results)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
