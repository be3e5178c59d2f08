"""Measure per-layer forward/backward time and memory of a model on one device.

    python tools/profile_model.py --out-dir profiles/h100 --model-family llama --num-layers 32 \\
        --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008 --seq-length 4096 \\
        --vocab-size 32000 --micro-batch-sizes 1 2 4 8 --tp 1 2 4 8

writes OUT_DIR/model.json (docs/profile_format.md); docs/profiling.md has the details.
"""
import argparse
import os

import torch

from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.flag_types import ArgumentParser, float_in, int_in, nonempty, nonneg_int
from megatron_galvatron.output_paths import check_output_dir
from megatron_galvatron.fp8.library import float8
from megatron_galvatron.parallel_state import detect_device
from megatron_galvatron.plan import FP8_RECIPES
from megatron_galvatron.profile_format import MODEL_FILE, write_model
from megatron_galvatron.profiling.model import ModelProfiler
from megatron_galvatron.profiling.model_settings import (
    DTYPES,
    ModelSettings,
    check_settings,
    default_dtype,
    default_optimizer_params,
)
from megatron_galvatron.profiling.report import model_summary
from megatron_galvatron.model.config import add_model_args, config_from_args

PROG = "profile_model.py"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=nonempty, required=True, help=f"directory to write {MODEL_FILE} into")
    g = p.add_argument_group("what to measure")
    g.add_argument("--micro-batch-sizes", type=int_in(1, 2 ** 16), nargs="+", default=[1, 2, 4, 8],
                   help="samples per micro-batch on one rank (default 1 2 4 8)")
    g.add_argument("--seq-lengths", type=int_in(1, 2 ** 22), nargs="+", default=None, help="default: --seq-length")
    g.add_argument("--tp", type=int_in(1, 1024), nargs="+", default=[1, 2, 4, 8],
                   help="tensor-parallel degrees (those the model cannot split are skipped; 1 is always measured)")
    g.add_argument("--no-sequence-parallel", action="store_true", help="skip the sequence-parallel variants")
    g.add_argument("--dtype", choices=("auto",) + DTYPES, default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (the search accepts bf16 profiles only)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    g.add_argument("--warmup", type=int_in(0, 10 ** 6), default=2, help="untimed repeats per point")
    g.add_argument("--iters", type=int_in(1, 10 ** 6), default=5,
                   help="timed repeats per point (their median is the point)")
    g.add_argument("--sustained-seconds", type=float_in(0, 86400), default=30.0,
                   help="length of the back-to-back run of a layer chain that measures how much slower "
                        "layers run inside a long step than alone (model.json 'sustained'); 0 = skip")
    g.add_argument("--sustained-duty", type=float_in(0, 1, lo_open=True, hi_open=True), nargs="*", default=[],
                   help="duty cycles in (0, 1) at which to repeat that run with the GPU idle between chains "
                        "(model.json 'sustained.duty'): the cost model then prices partly idle stages "
                        "(pipeline bubbles, exposed communication) at the measured clock instead of a "
                        "straight line; each adds --sustained-seconds")
    g.add_argument("--compile", action="store_true",
                   help="time the transformer layers through torch.compile (plans searched on this profile "
                        "say \"compile\": the runtime compiles every layer)")
    g.add_argument("--fp8", nargs="+", choices=FP8_RECIPES, default=[], metavar="RECIPE",
                   help=f"also measure the layer with float8 linears under each recipe ({', '.join(FP8_RECIPES)}; "
                        f"model.json 'layer.fp8.<recipe>'), which search/run.py --fp8 needs; requires torchao")
    g.add_argument("--soak-seconds", type=float_in(0, 3600), default=0.3,
                   help="untimed back-to-back repeats before each point, so it is timed at the clock a "
                        "busy (power-capped) GPU runs at; 0 = none")
    g.add_argument("--optimizer-params", type=int_in(64, 2 ** 36), default=None,
                   help="parameters in the optimizer-step measurement (default 2^27 on CUDA, 2^18 on CPU)")
    g.add_argument("--seed", type=nonneg_int, default=1234)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)
    return p


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return detect_device(int(os.environ.get("LOCAL_RANK", "0")))  # the training run's allocator settings


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        cfg = config_from_args(args)
        check_output_dir("--out-dir", args.out_dir)  # before the measurements, which take a while
        if args.fp8:
            float8("--fp8 layer tables")  # before any measurement: without torchao, one line
        device = pick_device(args.device)
        settings = ModelSettings(
            micro_batch_sizes=sorted(set(args.micro_batch_sizes)),
            seq_lengths=sorted(set(args.seq_lengths or [cfg.seq_length])),
            tp_degrees=sorted(set(args.tp)), sequence_parallel=not args.no_sequence_parallel,
            dtype=default_dtype(device) if args.dtype == "auto" else args.dtype,
            warmup=args.warmup, iters=args.iters, soak_seconds=args.soak_seconds,
            sustained_seconds=args.sustained_seconds, sustained_duty=tuple(args.sustained_duty),
            compile=args.compile, fp8=tuple(dict.fromkeys(args.fp8)),
            optimizer_params=args.optimizer_params or default_optimizer_params(device),
            seed=args.seed, progress=not args.quiet)
        check_settings(cfg, settings)
        profile = ModelProfiler(cfg, device, settings).run()
        path = write_model(profile, args.out_dir)
        print(model_summary(profile))
        if "sequence" in profile:
            seq = profile["sequence"]
            print(f"fits in sequence length over {', '.join(map(str, seq['seq_lengths']))}: activation memory "
                  f"{seq['activation']} in the length (s^2 term {seq['quadratic_share_at_longest']:.1%} of the "
                  f"tp1 layer's bytes per token at the longest)")
        for note in profile["notes"]:
            print(f"note: {note}")
        if profile["dtype"] != "bf16":
            print(f"note: measured in {profile['dtype']}; search/run.py accepts bf16 profiles only "
                  f"(pass --dtype bf16)")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
