"""Measure collectives, p2p and compute/communication overlap on the GPUs of a torchrun job.

    torchrun --nproc-per-node 8 tools/profile_comm.py --out-dir profiles/h100x8
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        tools/profile_comm.py --out-dir profiles/h100x16

writes OUT_DIR/hardware.json (docs/profile_format.md); docs/profiling.md has the details.
"""
import argparse
import os

import torch.distributed as dist

from megatron_galvatron.errors import UserError, exit_on_user_error
from megatron_galvatron.flag_types import ArgumentParser, int_in, nonempty
from megatron_galvatron.launch_env import adopt_slurm_env
from megatron_galvatron.output_paths import check_output_dir
from megatron_galvatron.parallel_state import detect_device, init_distributed
from megatron_galvatron.profile_format import HARDWARE_FILE, write_hardware
from megatron_galvatron.profiling.comm import CommProfiler, CommSettings
from megatron_galvatron.profiling.report import comm_summary, parse_size, sweep

PROG = "profile_comm.py"
MAX_BYTES = 64 << 30


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=nonempty, required=True, help=f"directory to write {HARDWARE_FILE} into")
    p.add_argument("--min-size", default="1M", help="smallest message (bytes; K/M/G suffixes), default 1M")
    p.add_argument("--max-size", default="512M", help="largest message, sizes double in between (default 512M)")
    p.add_argument("--warmup", type=int_in(0, 10 ** 6), default=3, help="untimed calls before each point")
    p.add_argument("--iters", type=int_in(1, 10 ** 6), default=20,
                   help="timed calls per point (their median is the point)")
    p.add_argument("--overlap-size", default="256M", help="all-reduce size of the overlap measurement")
    p.add_argument("--quick", action="store_true", help="tiny sizes (4K..64K), 1 warmup, 3 iters: for CI")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def settings(args) -> CommSettings:
    if args.quick:
        lo, hi, warmup, iters = 4 * 1024, 64 * 1024, 1, 3
    else:
        lo, hi, warmup, iters = parse_size(args.min_size), parse_size(args.max_size), args.warmup, args.iters
    overlap = parse_size(args.overlap_size)
    for flag, n in (("--min-size", lo), ("--max-size", hi), ("--overlap-size", overlap)):
        if n > MAX_BYTES:
            raise UserError(f"{flag} {n} bytes is over {MAX_BYTES >> 30}G, more than a GPU holds for one message")
    return CommSettings(sizes=sweep(lo, hi), warmup=warmup, iters=iters, overlap_bytes=overlap,
                        progress=not args.quiet)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        s = settings(args)
        check_output_dir("--out-dir", args.out_dir)  # before the measurements, which take a while
        adopt_slurm_env()  # srun without torchrun: one task per GPU
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise UserError("needs at least 2 ranks (torchrun --nproc-per-node N, N >= 2): a single GPU has no "
                            "collectives to measure, and search/run.py --num-gpus 1 needs only model.json")
        device = detect_device(int(os.environ.get("LOCAL_RANK", "0")))
        rank, _ = init_distributed(device)
        profile = CommProfiler(device, s).run()
        if rank == 0:
            path = write_hardware(profile, args.out_dir)
            print(comm_summary(profile))
            print(f"wrote {path}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
