"""Megatron-LM's and Hetu-Galvatron's spellings of what this project does, beyond plain aliases
(those are extra option strings on our own flags in arguments.py): flags whose value maps onto
ours (``--recompute-*``, ``--use-distributed-optimizer``, ``--lr-warmup-fraction``,
``--train-samples``, ``--mixed_precision``, Galvatron's -1 "auto" values) and the Megatron flags
this project does not implement, each refused in one line naming the nearest flag that exists.
docs/flags.md holds the whole table."""
import argparse
import math

from megatron_galvatron.errors import UserError
from megatron_galvatron.flag_types import float_in, int_in

AUTO = -1  # Hetu-Galvatron's "not set / decide for me" value of --global_tp_deg, --global_tp_consec, --chunks

# Megatron-LM flag -> the nearest flag here (what to use instead).
UNSUPPORTED = {
    "--fp16": "--bf16 (fp32 master weights; no loss scaling needed)",
    "--context-parallel-size": "--sequence-parallel (sequence sharding inside the TP group)",
    "--expert-model-parallel-size": "a dense model (no mixture of experts here)",
    "--num-experts": "a dense model (no mixture of experts here)",
    "--num-layers-per-virtual-pipeline-stage": "--pipeline-type 1f1b (no interleaved schedule)",
    "--virtual-pipeline-model-parallel-size": "--pipeline-type 1f1b (no interleaved schedule)",
    "--decoder-first-pipeline-num-layers": "a --galvatron-config plan with its pp_division",
    "--decoder-last-pipeline-num-layers": "a --galvatron-config plan with its pp_division",
    "--rampup-batch-size": "a fixed --global-batch-size",
    "--fp8-format": "--fp8 {tensorwise,rowwise} (torchao float8 linears)",
    "--apply-query-key-layer-scaling": "the default attention scaling (1/sqrt(head dim))",
    "--rotary-percent": "--position-embedding-type rope (rotates the whole head)",
    "--use-rotary-position-embeddings": "--position-embedding-type rope",
    "--no-position-embedding": "--position-embedding-type rope",
    "--squared-relu": "--swiglu or the default GELU",
    "--qk-layernorm": "the default attention (no query/key norm)",
    "--lr-warmup-init": "--lr-warmup-iters (warm-up from 0)",
    "--lr-decay-samples": "--lr-decay-iters",
    "--lr-warmup-samples": "--lr-warmup-iters or --lr-warmup-fraction",
    "--optimizer": "the default AdamW (--adam-beta1/--adam-beta2/--adam-eps)",
    "--ckpt-format": "--save (its own sharded format; tools/convert_checkpoint.py for Hugging Face)",
    "--use-checkpoint-opt_param-scheduler": "--load (the schedule resumes from the checkpoint)",
}
# Megatron-LM flags that only select kernels or overlaps this runtime always uses (or has no
# counterpart for): accepted so an example script runs, and changing nothing.
NO_EFFECT = ("--use-mcore-models", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion",
             "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion", "--no-rope-fusion",
             "--no-gradient-accumulation-fusion", "--overlap-grad-reduce", "--overlap-param-gather",
             "--use-fused-rmsnorm", "--log-throughput", "--log-timers-to-tensorboard",
             "--log-validation-ppl-to-tensorboard", "--log-memory-to-tensorboard", "--no-async-tensor-model-parallel-allreduce")
NO_EFFECT_VALUED = {"--transformer-impl": ("local", "transformer_engine"), "--distributed-backend": ("nccl", "gloo")}


class _Refuse(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported here: use {UNSUPPORTED[option_string]}")


def auto_or(inner):
    """Galvatron's spelling of a flag: -1 means "not set" (resolved by resolve_compat)."""
    def parse(text: str):
        return AUTO if text.strip() == "-1" else inner(text)
    return parse


def add_compat_args(p: argparse.ArgumentParser) -> None:
    """The Megatron/Galvatron flags that are not plain aliases (help: docs/flags.md)."""
    g = p.add_argument_group("Megatron-LM and Hetu-Galvatron spellings (docs/flags.md)")
    for flag in UNSUPPORTED:
        g.add_argument(flag, action=_Refuse, nargs="*", help=argparse.SUPPRESS)
    for flag in NO_EFFECT:
        g.add_argument(flag, action="store_true", dest="compat_" + flag[2:].replace("-", "_"), help=argparse.SUPPRESS)
    for flag, choices in NO_EFFECT_VALUED.items():
        g.add_argument(flag, choices=choices, dest="compat_" + flag[2:].replace("-", "_"), help=argparse.SUPPRESS)
    g.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                   help="full: checkpoint whole layers (--global-checkpoint 1); selective is not supported")
    g.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                   help="uniform: every layer; block: the first --recompute-num-layers layers of each stage")
    g.add_argument("--recompute-num-layers", type=int_in(1, 2 ** 14), default=None,
                   help="layers per stage that recompute under --recompute-method block")
    g.add_argument("--use-distributed-optimizer", action="store_true",
                   help="shard optimizer state and gradients over DP (--default-dp-type zero2)")
    g.add_argument("--lr-warmup-fraction", type=float_in(0.0, 1.0), default=None,
                   help="warm-up as a fraction of the decay iterations (instead of --lr-warmup-iters)")
    g.add_argument("--train-samples", type=int_in(1, 2 ** 40), default=None,
                   help="train this many samples: --train-iters = N / --global-batch-size")
    g.add_argument("--mixed_precision", choices=["bf16", "fp16", "fp32"], default=None,
                   help="Galvatron's precision flag: bf16 = --bf16, fp32 = neither; fp16 is not supported")
    from megatron_galvatron.data.tokenizer import TRAINING_TOKENIZER_TYPES
    g.add_argument("--tokenizer-type", choices=TRAINING_TOKENIZER_TYPES, default=None,
                   help="the data's tokenizer: it sets --vocab-size (data holding a larger id is refused)")
    g.add_argument("--tokenizer-model", default=None, help="SentencePiece .model or tokenizer.json (or its folder)")
    g.add_argument("--vocab-file", default=None, help="GPT2BPETokenizer's vocab.json")
    g.add_argument("--merge-file", default=None, help="GPT2BPETokenizer's merges.txt")
    # presets are always overridable; parameters are built sharded; TF32 follows PyTorch's setting
    for flag in ("--set_model_config_manually", "--set_layernum_manually", "--initialize_on_meta", "--allow_tf32"):
        g.add_argument(flag, type=int, choices=[0, 1], dest="compat_" + flag[2:], help=argparse.SUPPRESS)


def galvatron_chunks(world_size: int, pp_deg: int, global_bsz: int) -> int:
    """Hetu-Galvatron's micro-batch count for --chunks -1: one without pipelining, else a quarter
    of the per-replica batch (at least one)."""
    if pp_deg == 1:
        return 1
    return max(1, math.ceil((global_bsz // (world_size // pp_deg)) / 4))


def resolve_compat(args: argparse.Namespace) -> None:
    """Turn the mapped spellings into our flags' values, in place (before any check reads them)."""
    if args.global_tp_deg == AUTO:
        args.global_tp_deg = 1
    if args.global_tp_consec == AUTO:
        args.global_tp_consec = 1
    if args.mixed_precision == "fp16":
        raise UserError("--mixed_precision fp16 is not supported here: use --mixed_precision bf16 (or --bf16)")
    if args.mixed_precision is not None:
        args.bf16 = args.mixed_precision == "bf16"
    if args.use_distributed_optimizer and not args.sdp and args.default_dp_type == "ddp":
        args.default_dp_type = "zero2"
    _resolve_recompute(args)
    _resolve_tokenizer(args)
    if args.train_samples is not None:
        if args.train_iters is not None:
            raise UserError("--train-samples and --train-iters both given: give one")
        if args.train_samples < args.global_batch_size:
            raise UserError(f"--train-samples {args.train_samples} is less than one --global-batch-size "
                            f"{args.global_batch_size}")
        args.train_iters = args.train_samples // args.global_batch_size
    if args.train_iters is None:
        args.train_iters = 10
    if args.lr_warmup_fraction is not None:
        if args.lr_warmup_iters:
            raise UserError("--lr-warmup-fraction and --lr-warmup-iters both given: give one")
        args.lr_warmup_iters = int(args.lr_warmup_fraction * (args.lr_decay_iters or args.train_iters))


def _resolve_recompute(args: argparse.Namespace) -> None:
    granularity, method, n = args.recompute_granularity, args.recompute_method, args.recompute_num_layers
    if granularity == "selective":
        raise UserError("--recompute-granularity selective is not supported here: use --recompute-granularity "
                        "full (whole layers; a searched plan checkpoints only the layers that need it)")
    if granularity is None and (method or n):
        raise UserError("--recompute-method and --recompute-num-layers need --recompute-granularity full")
    args.recompute_block_layers = None
    if granularity == "full":
        if method == "block":
            if n is None:
                raise UserError("--recompute-method block needs --recompute-num-layers N (layers per stage)")
            args.recompute_block_layers = n
        else:  # uniform (Megatron's default method): every layer, --recompute-num-layers sets only grouping
            args.global_checkpoint = 1


def _resolve_tokenizer(args: argparse.Namespace) -> None:
    """--vocab-size from the tokenizer (as Megatron-LM does); a --vocab-size that disagrees is refused."""
    if args.tokenizer_type is None:
        for flag in ("tokenizer_model", "vocab_file", "merge_file"):
            if getattr(args, flag):
                raise UserError(f"--{flag.replace('_', '-')} needs --tokenizer-type (its tokenizer)")
        return
    from megatron_galvatron.data.tokenizer import vocabulary_size
    from megatron_galvatron.model.presets import given
    null = args.tokenizer_type == "NullTokenizer"  # its --vocab-size is the input, one id (eod) is added
    n = vocabulary_size(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file,
                        args.vocab_size if null else None)
    if not null and given(args.vocab_size) and args.vocab_size != n:
        raise UserError(f"--vocab-size {args.vocab_size} disagrees with --tokenizer-type {args.tokenizer_type}'s "
                        f"{n} ids: drop --vocab-size")
    args.vocab_size = n
