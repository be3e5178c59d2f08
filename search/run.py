"""Search the fastest per-layer parallel plan that fits the GPU memory and write it as plan JSON.

    python search/run.py --memory-gb 40 --num-gpus 8 --num-layers 32 --hidden-size 4096 \\
        --num-attention-heads 32 --seq-length 2048 --vocab-size 50257 --profile-dir profiles/ --output plan.json

Reads hardware.json and model.json from --profile-dir (docs/profile_format.md; for --num-gpus 1
model.json alone will do), prints the plan
and the next best alternatives, writes the plan and a picture of it (docs/search.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from itertools import groupby
from typing import List

from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.flag_types import ArgumentParser, float_in, int_in, nonempty, nonneg_int, positive_int
from megatron_galvatron.model.config import add_model_args, config_from_args
from megatron_galvatron.output_paths import check_output_file
from megatron_galvatron.plan import FP8_RECIPES, MAX_GLOBAL_BSZ, MAX_WORLD_SIZE, check_fp8_skip
from megatron_galvatron.profile_format import HARDWARE_FILE, check_model_matches, load_profiles
from megatron_galvatron.profile_format.single_gpu import load_model_only
from search.bound import compute_bound
from search.comm import Network
from search.cost_model import CostModel
from search.engine import InfeasibleError, Result, Searcher
from search import ulysses_cost
from search.strategies import SP_MODES, ULYSSES_MODES, Space, label

PROG = "search/run.py"
CARD_SHARE = 0.97  # of a GPU's memory, above which NCCL's buffers (not in the profile) may not fit


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--memory-gb", type=float_in(0, 2 ** 20, lo_open=True), required=True,
                   help="memory per GPU the plan may use (GiB)")
    p.add_argument("--num-gpus", type=int_in(1, MAX_WORLD_SIZE), required=True, help="world size of the training job")
    p.add_argument("--num-nodes", type=int_in(1, MAX_WORLD_SIZE), default=None,
                   help="nodes the GPUs are spread over, equally (default: as many as the hardware profile's "
                        "GPUs per node make)")
    p.add_argument("--profile-dir", type=nonempty, required=True, help="directory with hardware.json and model.json")
    p.add_argument("--compile-profile-dir", type=nonempty, default=None,
                   help="a model.json of compiled layers (profile_model.py --compile): plans are searched with "
                        "both profiles and the faster kind wins, so the plan says whether compiling pays")
    p.add_argument("--output", type=nonempty, default="plan.json", help="plan JSON to write")
    add_model_args(p, required=True)
    s = p.add_argument_group("search space")
    s.add_argument("--max-tp", type=positive_int, default=None,
                   help="largest tensor-parallel degree (default: GPUs per node)")
    s.add_argument("--max-pp", type=positive_int, default=None, help="largest pipeline degree (default: no limit)")
    s.add_argument("--disable-sdp", action="store_true", help="never use ZeRO-3 (sharded data parallel)")
    s.add_argument("--disable-checkpoint", action="store_true", help="never recompute activations")
    s.add_argument("--pipeline-type", choices=("gpipe", "1f1b", "search"), default="search")
    bs = s.add_mutually_exclusive_group()
    bs.add_argument("--global-batch-size", type=int_in(1, MAX_GLOBAL_BSZ), default=None,
                    help="fixed global batch (default: 8 x GPUs)")
    bs.add_argument("--global-batch-size-range", type=int_in(1, MAX_GLOBAL_BSZ), nargs=2, metavar=("A", "B"),
                    default=None,
                    help="try A, 2A, 4A, ... up to B (and B) and keep the highest throughput")
    s.add_argument("--sequence-parallel", choices=SP_MODES, default="search")
    s.add_argument("--ulysses", choices=ULYSSES_MODES, default="off",
                   help="search: layers and vocab may also take Ulysses sequence parallelism (all-to-all "
                        "between sequence and head sharding), for micro-batches of fewer samples than GPUs")
    s.add_argument("--fp8", choices=("off",) + FP8_RECIPES, default="off",
                   help="let each layer compute its linears in float8 with this recipe where that is faster "
                        "(it changes the numerics, so it is off unless asked; model.json needs its "
                        "layer.fp8 tables: tools/profile_model.py --fp8)")
    s.add_argument("--fp8-skip-first", type=nonneg_int, default=0, metavar="N",
                   help="with --fp8: the first N layers stay bf16")
    s.add_argument("--fp8-skip-last", type=nonneg_int, default=0, metavar="N",
                   help="with --fp8: the last N layers stay bf16")
    o = p.add_argument_group("output")
    o.add_argument("--top-k", type=int_in(1, 1000), default=5, help="alternatives to print")
    o.add_argument("--plot", type=nonempty, default=None, help="PNG picture of the plan (default: OUTPUT with .png)")
    o.add_argument("--no-plot", action="store_true")
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    o.add_argument("--threads", type=int_in(1, 1024), default=min(4, os.cpu_count() or 1),
                   help="candidates solved at once (the DP releases the GIL)")
    return p


def batch_sizes(args: argparse.Namespace) -> List[int]:
    if args.global_batch_size_range:
        a, b = args.global_batch_size_range
        if b < a:
            raise UserError(f"--global-batch-size-range {a} {b}: need A <= B")
        out, x = [], a
        while x <= b:
            out.append(x)
            x *= 2
        return sorted(set(out + [b]))
    return [args.global_batch_size if args.global_batch_size is not None else min(8 * args.num_gpus, MAX_GLOBAL_BSZ)]


def plot_path(args: argparse.Namespace) -> str:
    return args.plot or os.path.splitext(args.output)[0] + ".png"


def check_args(args: argparse.Namespace) -> None:
    """What the flags' types cannot check alone; the outputs, before the search runs."""
    check_output_file("--output", args.output)
    if args.plot and args.no_plot:
        raise UserError("--plot and --no-plot both given: pick one")
    if not args.no_plot:
        check_output_file("--plot", plot_path(args))
    if args.num_nodes is not None and args.num_gpus % args.num_nodes:
        raise UserError(f"--num-gpus={args.num_gpus} must be a multiple of --num-nodes={args.num_nodes}")
    check_fp8_skip(None if args.fp8 == "off" else args.fp8, args.fp8_skip_first, args.fp8_skip_last, args.num_layers)


def gpus_per_node(args: argparse.Namespace, profiled_per_node: int) -> int:
    if args.num_nodes is not None:
        return args.num_gpus // args.num_nodes
    per_node = min(profiled_per_node, args.num_gpus)
    if args.num_gpus % per_node:
        raise UserError(f"--num-gpus={args.num_gpus} is not a whole number of {per_node}-GPU nodes (the hardware "
                        f"profile's): pass --num-nodes")
    return per_node


def summarize_layers(result: Result) -> str:
    runs = [(len(list(g)), k) for k, g in groupby(label(s) for s in result.plan.layers)]
    return ", ".join(f"{n}x {k}" for n, k in runs) + (" (compiled)" if result.plan.compile else "")


def alternatives_table(results: List[Result]) -> str:
    lines = [f"{'#':>2} {'tokens/s':>10} {'iter s':>8} {'pp':>3} {'bsz':>5} {'chunks':>6} {'pipe':>5} "
             f"{'vocab':>16} {'peak GB':>8}  division / layers"]
    for i, r in enumerate(results, 1):
        p, c = r.plan, r.candidate
        lines.append(f"{i:>2} {r.tokens_per_s:>10.0f} {r.prediction.iter_time_s:>8.4f} {p.pp_deg:>3} "
                     f"{p.global_bsz:>5} {p.chunks:>6} {p.pipeline_type:>5} {label(c.vocab):>16} "
                     f"{max(r.prediction.peak_mem_gb):>8.2f}  {p.pp_division}: {summarize_layers(r)}")
    return "\n".join(lines)


def search_modes(args, cfg, sizes):
    """Run the search on the eager profile and, with --compile-profile-dir, on the compiled one
    (same hardware.json); returns the best plans of both, fastest first, and the searchers."""
    if args.num_gpus == 1 and not os.path.exists(os.path.join(args.profile_dir, HARDWARE_FILE)):
        hw, model_profile = load_model_only(args.profile_dir)  # one GPU communicates with no one
    else:
        hw, model_profile = load_profiles(args.profile_dir)
    profiles = [model_profile]
    if args.compile_profile_dir:
        compiled = load_profiles(args.compile_profile_dir)[1]
        if not compiled.compiled:
            raise UserError(f"--compile-profile-dir {args.compile_profile_dir}: its model.json timed eager layers; "
                            f"profile with tools/profile_model.py --compile")
        profiles.append(compiled)
    if hw.memory_gb and args.memory_gb > CARD_SHARE * hw.memory_gb:
        print(f"{PROG}: note: --memory-gb {args.memory_gb:g} is over {CARD_SHARE:.0%} of the {hw.memory_gb:.1f} GiB "
              f"card; NCCL's buffers and the CUDA context of every process need the rest "
              f"(docs/search.md, 'Choosing --memory-gb')", file=sys.stderr)
    per_node = gpus_per_node(args, hw.gpus_per_node)
    space = Space(max_tp=args.max_tp or per_node, allow_zero3=not args.disable_sdp,
                  allow_checkpoint=not args.disable_checkpoint, sequence_parallel=args.sequence_parallel,
                  fp8=None if args.fp8 == "off" else args.fp8, ulysses=args.ulysses)
    if args.ulysses != "off" and ulysses_cost.all_to_all_op(hw) != "all_to_all":
        print(f"{PROG}: note: {args.profile_dir}/hardware.json has no all_to_all entries: Ulysses' all-to-alls "
              f"are priced from all-gather bandwidth (re-run tools/profile_comm.py to measure them)", file=sys.stderr)
    types = ["1f1b", "gpipe"] if args.pipeline_type == "search" else [args.pipeline_type]
    results, searchers, errors = [], [], []
    for prof in profiles:
        prof, seq_note = prof.for_seq_length(cfg.seq_length)  # without sequence fits, as profiled
        if seq_note:
            print(f"{PROG}: note: {seq_note}", file=sys.stderr)
        check_model_matches(prof, cfg.to_dict())
        cost = CostModel(cfg, prof, Network(hw, args.num_gpus, per_node))
        searcher = Searcher(cost, args.num_gpus, args.memory_gb, space, sizes, types, args.max_pp, args.threads,
                            (args.fp8_skip_first, args.fp8_skip_last))
        searchers.append(searcher)
        try:
            results += searcher.run(top_k=args.top_k, progress=not args.quiet)
        except InfeasibleError as e:  # the other kind may still fit (its allocator profile differs)
            errors.append(e)
    if not results:
        raise errors[0]
    return sorted(results, key=Result.sort_key)[:args.top_k], searchers


def describe_bound(best: Result, searchers, cfg, num_gpus: int) -> str:
    """The best plan against the compute bound of the profile it was searched on (search/bound.py)."""
    searcher = next(s for s in searchers if s.cost.profile.compiled == best.plan.compile)
    prof = searcher.cost.profile
    bound = compute_bound(prof, cfg.num_layers, cfg.flops_per_token(), searcher.space.fp8)
    per_gpu = best.tokens_per_s / num_gpus
    layers = f"{'compiled' if prof.compiled else 'eager'} layers"
    if searcher.space.fp8:
        layers += f" in bf16 or fp8 {searcher.space.fp8}"
    return (f"compute bound ({layers} at tp 1, no communication, "
            f"optimizer or bubbles): {bound.tokens_per_s:,.0f} tokens/s/GPU; this plan {per_gpu:,.0f} "
            f"({per_gpu / bound.tokens_per_s:.1%} of it)")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        cfg = config_from_args(args)  # --model-size and the model flags first: check_args reads them
        check_args(args)
        sizes = batch_sizes(args)
        t0 = time.perf_counter()
        results, searchers = search_modes(args, cfg, sizes)
        elapsed = time.perf_counter() - t0
        best = results[0].plan
        best.validate(cfg, args.num_gpus)
        best.save(args.output)
        print(best.describe())
        print(f"\ntop {len(results)} plans:")
        print(alternatives_table(results))
        n = {k: sum(getattr(x.stats, k) for x in searchers)
             for k in ("candidates", "evaluated", "dp_runs", "pruned_by_memory", "pruned_by_bound")}
        kinds = " (eager and compiled layers)" if len(searchers) > 1 else ""
        print(f"\nsearched {n['candidates']} candidates{kinds} in {elapsed:.2f} s: {n['evaluated']} solved "
              f"({n['dp_runs']} DP runs), {n['pruned_by_memory']} over the memory bound, "
              f"{n['pruned_by_bound']} cut by the time bound")
        print(describe_bound(results[0], searchers, cfg, args.num_gpus))
        print(f"wrote {args.output}")
        if not args.no_plot:
            from search.plot import save_plan_picture
            path = plot_path(args)
            if save_plan_picture(best, path, args.memory_gb):
                print(f"wrote {path}")


if __name__ == "__main__":
    main()
