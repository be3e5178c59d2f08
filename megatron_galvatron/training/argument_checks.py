"""What pretrain_gpt.py's flags may be, checked before any process group, model or data exists:
the range of every number (as argparse types, so a bad value is argparse's one line), the
flags that only make sense together, the outputs, and flags a plan file would override."""
import argparse

from megatron_galvatron.errors import UserError
from megatron_galvatron.flag_types import float_in, int_in, nonempty, nonneg_int, positive_int
from megatron_galvatron.output_paths import check_output_dir, check_output_file
from megatron_galvatron.plan import Plan
from megatron_galvatron.training.compat_flags import AUTO, auto_or

MAX_GLOBAL_BATCH = 2 ** 24  # samples per step; more cannot be a real run (and the data index would not fit)
MAX_SAMPLES = 2 ** 32  # samples a run reads (training and evaluation): its data index is built up front

# dest -> argparse type, for the flags of training/arguments.py (the model flags check themselves).
FLAG_TYPES = {
    "galvatron_config": nonempty, "pp_deg": positive_int, "global_tp_deg": positive_int,
    "vocab_tp": positive_int, "chunks": int_in(1, MAX_GLOBAL_BATCH),
    "fp8_skip_first": nonneg_int, "fp8_skip_last": nonneg_int,
    "micro_batch_size": int_in(1, MAX_GLOBAL_BATCH), "global_batch_size": int_in(1, MAX_GLOBAL_BATCH),
    "train_iters": int_in(1, 10 ** 9), "lr": float_in(0.0, 10.0, lo_open=True), "min_lr": float_in(0.0, 10.0),
    "lr_warmup_iters": int_in(0, 10 ** 9), "lr_decay_iters": int_in(1, 10 ** 9),
    "weight_decay": float_in(0.0, 10.0), "adam_beta1": float_in(0.0, 1.0, hi_open=True),
    "adam_beta2": float_in(0.0, 1.0, hi_open=True), "adam_eps": float_in(0.0, 1.0, lo_open=True),
    "clip_grad": float_in(0.0, 1e6), "seed": int_in(0, 2 ** 31 - 1), "log_interval": positive_int,
    "tensorboard_dir": nonempty, "metrics_json": nonempty,
    "data_path": nonempty, "split": nonempty, "eval_interval": nonneg_int, "eval_iters": int_in(0, 10 ** 9),
    "save": nonempty, "load": nonempty, "save_interval": nonneg_int,
    "exit_interval": positive_int, "exit_duration_in_mins": float_in(0.0, 1e7, lo_open=True),
    "distributed_timeout_minutes": float_in(0.0, 1e6, lo_open=True), "max_skipped_steps": int_in(0, 10 ** 9),
}


def apply_flag_types(parser: argparse.ArgumentParser) -> None:
    """Give each flag of FLAG_TYPES its checked type (argparse has no public list of actions)."""
    for action in parser._actions:
        if action.dest in FLAG_TYPES:
            t = FLAG_TYPES[action.dest]
            action.type = auto_or(t) if getattr(action, "galvatron_auto", False) else t


def check_args(args: argparse.Namespace) -> None:
    """Flags that only make sense together, and outputs that must be writable, before any work."""
    if args.min_lr > args.lr:
        raise UserError(f"--min-lr {args.min_lr:g} exceeds --lr {args.lr:g}: the schedule decays down to --min-lr")
    if args.lr_decay_iters is not None and args.lr_warmup_iters > args.lr_decay_iters:
        raise UserError(f"--lr-warmup-iters {args.lr_warmup_iters} exceeds --lr-decay-iters {args.lr_decay_iters}")
    if args.eval_interval and not args.eval_iters:
        raise UserError("--eval-interval needs --eval-iters N (N >= 1 batches per evaluation)")
    if args.skip_train and not args.eval_iters:
        raise UserError("--skip-train evaluates only: give --eval-iters N (N >= 1)")
    if args.save_interval and not args.save:
        raise UserError("--save-interval needs --save DIR to write the checkpoints to")
    if args.data_path is not None and not args.data_path:
        raise UserError("--data-path needs a prefix (or weight prefix pairs); for synthetic data use --mock-data")
    if args.data_path and args.mock_data:
        raise UserError("--mock-data and --data-path both given: pick one")
    if args.data_path:
        _check_data(args.data_path, args.split)
    if args.save:
        check_output_dir("--save", args.save)
    if args.tensorboard_dir:
        check_output_dir("--tensorboard-dir", args.tensorboard_dir)
    if args.metrics_json:
        check_output_file("--metrics-json", args.metrics_json)


def _check_data(data_path, split: str) -> None:
    """The data flags parse and every file pair opens (its header and sizes checked): a corrupt
    file is found before the model is built, not after."""
    from megatron_galvatron.data.gpt_dataset import parse_data_path, parse_split
    from megatron_galvatron.data.indexed_dataset import IndexedDataset
    parse_split(split)
    for weight, prefix in parse_data_path(list(data_path)):
        if weight > 0:
            IndexedDataset(prefix)


def _flag_defaults() -> argparse.Namespace:
    from megatron_galvatron.training.arguments import build_parser  # it imports this module
    return build_parser().parse_args([])


def check_against_plan(args: argparse.Namespace, plan: Plan) -> Plan:
    """The flags against the (valid) plan they train: how many samples the run reads, and, with a
    plan file, the flags it overrides."""
    n_eval = (args.train_iters // args.eval_interval + 1 if args.eval_interval else 1) * args.eval_iters
    samples = (args.train_iters + n_eval) * plan.global_bsz
    if samples > MAX_SAMPLES:
        raise UserError(f"--train-iters {args.train_iters} (and --eval-iters {args.eval_iters}) x global batch "
                        f"{plan.global_bsz} = {samples} samples is over {MAX_SAMPLES}, more than any data index holds")
    if args.galvatron_config:
        _check_plan_overrides(args, plan)
    return plan


def _check_plan_overrides(args: argparse.Namespace, plan: Plan) -> None:
    """A flag the plan file decides must not be given, unless it says what the plan says: a run
    would otherwise silently train something else than the command line reads."""
    layers = plan.layers
    dps = {plan.stage_world // s.tp for s in layers}
    says = {  # dest -> (what the plan says, the plan's field)
        "global_batch_size": (plan.global_bsz, "global_bsz"),
        "chunks": (plan.chunks, "chunks"),
        "micro_batch_size": (plan.global_micro_batch_size // dps.pop() if len(dps) == 1 else None,
                             "global_bsz / chunks / dp"),
        "pp_deg": (plan.pp_deg, "pp_deg"),
        "global_tp_deg": (_same(s.tp for s in layers), "layers[*].tp"),
        "global_tp_consec": (_same(int(s.tp_consec) for s in layers), "layers[*].tp_consec"),
        "default_dp_type": (_same(s.dp_type for s in layers), "layers[*].dp_type"),
        "sdp": (_same(int(s.dp_type == "zero3") for s in layers), "layers[*].dp_type"),
        "global_checkpoint": (_same(int(s.checkpoint) for s in layers), "layers[*].checkpoint"),
        "sequence_parallel": (_same(s.sp for s in layers), "layers[*].sp"),
        "vocab_tp": (plan.vocab.tp, "vocab.tp"),
        "vocab_sdp": (int(plan.vocab.dp_type == "zero3"), "vocab.dp_type"),
        "pipeline_type": (plan.pipeline_type, "pipeline_type"),
    }
    defaults = _flag_defaults()
    for dest, (value, key) in says.items():
        given = getattr(args, dest)
        if given == getattr(defaults, dest) or given == AUTO:
            continue  # not given (or given as the default, which the plan may override as it always has)
        if dest == "pipeline_type" and given == "pipedream_flush":
            given = "1f1b"
        if given != value:
            flag = "--" + dest.replace("_", "-")
            shown = "differs per layer" if value is None else value
            raise UserError(f"{flag} {given} disagrees with the plan's {key} ({shown}) in --galvatron-config "
                            f"{args.galvatron_config}: drop {flag} or change the plan")


def _same(values):
    """The one value all of `values` share; None if they differ."""
    found = set(values)
    return found.pop() if len(found) == 1 else None
