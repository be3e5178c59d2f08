"""Convert checkpoints: Hugging Face GPT-2 / LLaMA / Qwen2 folders <-> ours, and to another plan.

    python tools/convert_checkpoint.py hf-to-ours --hf-dir gpt2/ --save ckpts/gpt2
    python tools/convert_checkpoint.py ours-to-hf --load ckpts/run1 --hf-dir exported/
    python tools/convert_checkpoint.py reshard --load ckpts/run1 --galvatron-config plan.json [--save ckpts/run1b]
"""
import time

from megatron_galvatron.errors import exit_on_user_error
from megatron_galvatron.flag_types import ArgumentParser, float_in, int_in, nonempty
from megatron_galvatron.output_paths import check_output_dir
from megatron_galvatron.plan import MAX_WORLD_SIZE

PROG = "convert_checkpoint.py"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-ours", help="Hugging Face folder -> our checkpoint (iteration 0)")
    a.add_argument("--hf-dir", type=nonempty, required=True,
                   help="folder with config.json and model.safetensors / pytorch_model.bin")
    a.add_argument("--save", type=nonempty, required=True, help="checkpoint root to create the checkpoint in")
    b = sub.add_parser("ours-to-hf", help="our checkpoint -> folder for transformers' from_pretrained")
    b.add_argument("--load", type=nonempty, required=True, help="checkpoint root (its latest) or an iter_* directory")
    b.add_argument("--hf-dir", type=nonempty, required=True, help="new (or empty) output folder")
    b.add_argument("--max-shard-gb", type=float_in(2 ** -20, 2 ** 20), default=4.0,
                   help="split model.safetensors above this size")
    c = sub.add_parser("reshard", help="validate a checkpoint against another plan; --save writes a copy recording it")
    c.add_argument("--load", type=nonempty, required=True)
    c.add_argument("--galvatron-config", type=nonempty, required=True,
                   help="target plan JSON (native or Hetu-Galvatron)")
    c.add_argument("--world-size", type=int_in(1, MAX_WORLD_SIZE), default=None,
                   help="world size (needed for a Hetu-Galvatron config)")
    c.add_argument("--save", type=nonempty, default=None,
                   help="checkpoint root for a copy that records the target plan")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        flag, out = ("--hf-dir", args.hf_dir) if args.command == "ours-to-hf" else ("--save", args.save)
        if out:
            check_output_dir(flag, out)  # before any tensor is read
        source = args.hf_dir if args.command == "hf-to-ours" else args.load
        print(f"{args.command}: reading {source}", flush=True)  # a large model takes minutes: say so first
        t0 = time.perf_counter()
        if args.command == "hf-to-ours":
            from megatron_galvatron.convert.hf import hf_to_ours
            from megatron_galvatron.checkpoint.architecture import model_flags
            path, cfg = hf_to_ours(args.hf_dir, args.save)
            print(f"wrote {path}\ntrain it with: pretrain_gpt.py --load {args.save} {model_flags(cfg)}")
        elif args.command == "ours-to-hf":
            from megatron_galvatron.convert.hf import export_type, ours_to_hf
            cfg = ours_to_hf(args.load, args.hf_dir, int(args.max_shard_gb * (1 << 30)))
            print(f"wrote {args.hf_dir} ({export_type(cfg)}, {cfg.num_layers} layers)")
        else:
            from megatron_galvatron.convert.reshard import reshard
            d, plan, copy = reshard(args.load, args.galvatron_config, args.world_size, args.save)
            print(f"{d} loads under this plan as it is (checkpoints are stored plan-independently):\n"
                  f"  pretrain_gpt.py --load {args.load} --galvatron-config {args.galvatron_config}")
            if copy:
                print(f"wrote {copy}, recording the plan")
        print(f"{args.command}: done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
