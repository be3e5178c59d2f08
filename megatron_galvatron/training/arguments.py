"""Command-line flags (Megatron-LM spelling) and how they become a model config and a plan."""
import argparse
import dataclasses

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.errors import UserError
from megatron_galvatron.flag_types import ArgumentParser
from megatron_galvatron.model.config import GPTConfig, add_model_args
from megatron_galvatron.parallel_state import launch_gpus_per_node
from megatron_galvatron.training.argument_checks import apply_flag_types, check_against_plan
from megatron_galvatron.training.compat_flags import AUTO, add_compat_args, galvatron_chunks, resolve_compat
from megatron_galvatron.training.config import (CheckpointConfig, DataConfig, EvalConfig, LoggingConfig, LRConfig,
                                             OptimizerConfig, ResilienceConfig, TrainingConfig)


class HelpWithDefaults(argparse.HelpFormatter):
    """--help shows every flag's default, unless its help already says it (or it is an on/off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)".lstrip()


def galvatron(action: argparse.Action) -> argparse.Action:
    """Mark a flag whose -1 means Hetu-Galvatron's "not set" (its range check lets -1 through)."""
    action.galvatron_auto = True
    return action


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism (GLOBAL mode; with --galvatron-config the plan decides: these must agree)")
    g.add_argument("--galvatron-config", "--galvatron_config_path", default=None,
                   help="plan JSON (native or Hetu-Galvatron format)")
    g.add_argument("--pp-deg", "--pipeline-model-parallel-size", "--pp_deg", type=int, default=1,
                   help="pipeline stages")
    g.add_argument("--global-tp-deg", "--tensor-model-parallel-size", type=int, default=1,
                   help="tensor-parallel degree of every layer")
    galvatron(g.add_argument("--global_tp_deg", dest="global_tp_deg", type=int, help=argparse.SUPPRESS))
    g.add_argument("--global-tp-consec", type=int, choices=[0, 1], default=1,
                   help="1: a TP group is consecutive ranks; 0: strided (every dp-th rank)")
    galvatron(g.add_argument("--global_tp_consec", dest="global_tp_consec", type=int, choices=[0, 1, AUTO],
                             help=argparse.SUPPRESS))
    g.add_argument("--default-dp-type", "--default_dp_type", choices=["ddp", "zero2", "zero3"], default="ddp",
                   help="data parallelism of every layer: replicated, gradients + optimizer sharded, or all sharded")
    g.add_argument("--sdp", type=int, choices=[0, 1], default=0, help="1 = zero3 for every layer")
    g.add_argument("--global-checkpoint", "--global_checkpoint", type=int, choices=[0, 1], default=0,
                   help="1: recompute every layer's activations in backward")
    g.add_argument("--sequence-parallel", "--sequence_parallel", action="store_true",
                   help="Megatron sequence parallelism inside each TP group")
    g.add_argument("--vocab-tp", "--vocab_tp", type=int, default=None,
                   help="TP degree of embedding/LM head (default: global)")
    g.add_argument("--vocab-sdp", "--vocab_sdp", "--embed_sdp", type=int, choices=[0, 1], default=None,
                   help="1: ZeRO-3 for the embedding and LM head (default: as the layers)")
    galvatron(g.add_argument("--chunks", type=int, default=None,
                             help="micro-batches per step; -1: Hetu-Galvatron's choice (default: from "
                                  "--micro-batch-size)"))
    g.add_argument("--pipeline-type", "--pipeline_type", choices=["gpipe", "1f1b", "pipedream_flush"],
                   default="1f1b", help="pipeline schedule (pipedream_flush = 1f1b)")
    g.add_argument("--fp8", choices=plan_mod.FP8_RECIPES, default=None,
                   help="float8 linears (torchao) in every transformer layer with this scaling recipe "
                        "(default: bf16); the embedding and LM head stay bf16")
    g.add_argument("--fp8-skip-first", type=int, default=0, help="keep the first N layers in bf16 (with --fp8)")
    g.add_argument("--fp8-skip-last", type=int, default=0, help="keep the last N layers in bf16 (with --fp8)")


def add_training_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=None, help="samples per micro-batch per DP rank")
    g.add_argument("--global-batch-size", "--global-train-batch-size", "--global_train_batch_size",
                   dest="global_batch_size", type=int, default=8, help="samples per optimizer step")
    g.add_argument("--train-iters", type=int, default=None,
                   help="optimizer steps in all, a resumed run stopping there too (default: 10)")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    g.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the decay")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warm-up steps from 0 to --lr")
    g.add_argument("--lr-decay-iters", type=int, default=None,
                   help="steps over which the rate decays to --min-lr (default: --train-iters)")
    g.add_argument("--lr-decay-style", choices=["cosine", "linear", "constant"], default="cosine",
                   help="shape of the decay after warm-up")
    g.add_argument("--weight-decay", "--adam_weight_decay", type=float, default=0.01,
                   help="AdamW decoupled weight decay")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="AdamW beta1")
    g.add_argument("--adam-beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="AdamW epsilon")
    g.add_argument("--clip-grad", type=float, default=1.0, help="clip the global gradient norm to this (0: no clipping)")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 compute with float32 master weights and gradient reduction (default: float32)")
    g.add_argument("--seed", type=int, default=1234, help="seed of the weights, dropout and data order")
    g.add_argument("--log-interval", type=int, default=1, help="print an iteration line every N steps")
    g.add_argument("--tensorboard-dir", default=None,
                   help="write TensorBoard scalars here (needs tensorboard; without it a warning and JSON lines)")
    g.add_argument("--compile", action="store_true", help="torch.compile each transformer layer")
    g.add_argument("--exit-on-nonfinite", type=int, choices=[0, 1], default=1,
                   help="1: stop after --max-skipped-steps NaN/Inf steps; 0: skip them for ever")
    g.add_argument("--metrics-json", default=None, help="write per-iteration metrics (JSON lines) here")


def add_logging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("logging to Weights & Biases (optional: pip install wandb)")
    g.add_argument("--wandb-project", default=None, help="log the iteration records to this W&B project")
    g.add_argument("--wandb-exp-name", default=None, help="the run's name in W&B (default: W&B picks one)")
    g.add_argument("--wandb-save-dir", default=None, help="where W&B keeps the run's files (default: ./wandb)")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and checkpoints")
    g.add_argument("--mock-data", action="store_true", help="synthetic learnable tokens (default without --data-path)")
    g.add_argument("--data-path", nargs="*", default=None, help="prefix, or weight prefix weight prefix ...")
    g.add_argument("--split", default="949,50,1", help="train,valid,test weights of the documents")
    g.add_argument("--data-order", choices=["epochs", "megatron"], default="epochs",
                   help="sample order: epochs (each epoch served whole, in turn) or megatron "
                        "(megatron-core GPTDataset's, for comparing with a Megatron run)")
    g.add_argument("--eval-interval", type=int, default=0, help="evaluate every N steps (0: never during training)")
    g.add_argument("--eval-iters", type=int, default=0, help="global batches of the valid split per evaluation")
    g.add_argument("--skip-train", action="store_true", help="evaluate once (needs --eval-iters) and exit")
    g.add_argument("--save", default=None, help="directory to save checkpoints into")
    g.add_argument("--load", default=None,
                   help="checkpoint directory (or root of iter_* directories) to resume from")
    g.add_argument("--save-interval", type=int, default=0, help="save every N steps (0: at the end only)")
    g.add_argument("--finetune", action="store_true",
                   help="load only the weights from --load: iteration 0, fresh optimizer, data from the start")
    g.add_argument("--no-load-optim", action="store_true", help="do not load the optimizer state from --load")
    g.add_argument("--no-load-rng", action="store_true", help="do not load the RNG streams from --load")


def add_resilience_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preemption, failures and bad steps (docs/reliability.md)")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM or SIGINT (to any rank) every rank finishes the step, saves to --save and exits 0")
    g.add_argument("--exit-interval", type=int, default=None, help="save and exit 0 when the iteration is a multiple of N")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save and exit 0 after the first step that ends past this many minutes of wall time")
    g.add_argument("--distributed-timeout-minutes", type=float, default=10.0,
                   help="how long a collective waits for a peer before the run stops")
    g.add_argument("--max-skipped-steps", type=int, default=0,
                   help="a step whose gradient norm is NaN/Inf is skipped; stop after more than K in a row "
                        "(0: stop at the first; --exit-on-nonfinite 0: never stop)")
    g.add_argument("--async-save", action="store_true",
                   help="write checkpoint files in a background thread; training waits only for the gathers")


def resilience_config(args: argparse.Namespace) -> ResilienceConfig:
    c = ResilienceConfig(exit_signal_handler=args.exit_signal_handler, exit_interval=args.exit_interval,
                         exit_duration_mins=args.exit_duration_in_mins,
                         distributed_timeout_mins=args.distributed_timeout_minutes,
                         max_skipped_steps=args.max_skipped_steps if args.exit_on_nonfinite else None,
                         async_save=args.async_save)
    if c.exit_interval is not None and c.exit_interval < 1:
        raise UserError(f"--exit-interval {c.exit_interval}: give a number of iterations >= 1")
    if c.exit_duration_mins is not None and not c.exit_duration_mins > 0:
        raise UserError(f"--exit-duration-in-mins {c.exit_duration_mins}: give a positive number of minutes")
    if not c.distributed_timeout_mins > 0:
        raise UserError(f"--distributed-timeout-minutes {c.distributed_timeout_mins}: give a positive number")
    if args.max_skipped_steps < 0:
        raise UserError(f"--max-skipped-steps {args.max_skipped_steps}: give a count >= 0")
    if c.exits_early and not args.save:
        flag = next(f for f, on in (("--exit-signal-handler", c.exit_signal_handler),
                                    ("--exit-interval", c.exit_interval is not None),
                                    ("--exit-duration-in-mins", True)) if on)
        raise UserError(f"{flag} saves a checkpoint before exiting: give --save DIR (and --load DIR to resume)")
    return c


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The run's settings besides model and plan, read once from the parsed flags."""
    return TrainingConfig(
        train_iters=args.train_iters, seed=args.seed, bf16=args.bf16,
        optimizer=OptimizerConfig(weight_decay=args.weight_decay, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_eps, clip_grad=args.clip_grad),
        lr=LRConfig(lr=args.lr, min_lr=args.min_lr, warmup_iters=args.lr_warmup_iters,
                    decay_iters=args.lr_decay_iters or args.train_iters, decay_style=args.lr_decay_style),
        eval=EvalConfig(interval=args.eval_interval, iters=args.eval_iters, skip_train=args.skip_train),
        logging=LoggingConfig(interval=args.log_interval, tensorboard_dir=args.tensorboard_dir,
                              metrics_json=args.metrics_json, wandb_project=args.wandb_project,
                              wandb_exp_name=args.wandb_exp_name, wandb_save_dir=args.wandb_save_dir),
        checkpoint=CheckpointConfig(save=args.save, load=args.load, save_interval=args.save_interval,
                                    finetune=args.finetune, load_optim=not args.no_load_optim,
                                    load_rng=not args.no_load_rng),
        data=DataConfig(path=args.data_path, split=args.split, order=args.data_order), resilience=resilience_config(args))


class _TrainingParser(ArgumentParser):
    """Resolves the Megatron/Galvatron spellings into our flags' values as part of parsing."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        try:
            resolve_compat(ns)
        except UserError as e:
            self.error(str(e))
        return ns, rest


def build_parser(description: str = "Train a GPT model under a per-layer hybrid parallel plan") -> argparse.ArgumentParser:
    p = _TrainingParser(description=description, formatter_class=HelpWithDefaults)
    add_model_args(p)
    add_parallel_args(p)
    add_training_args(p)
    add_logging_args(p)
    add_data_args(p)
    add_resilience_args(p)
    add_compat_args(p)
    apply_flag_types(p)
    return p


def build_plan(args, cfg: GPTConfig, world_size: int) -> plan_mod.Plan:
    """The plan from --galvatron-config, or the uniform GLOBAL-mode plan from the flags."""
    plan_mod.check_fp8_skip(args.fp8, args.fp8_skip_first, args.fp8_skip_last, cfg.num_layers)
    if args.galvatron_config:
        if args.fp8:
            raise UserError("--fp8 builds a uniform plan; with --galvatron-config the plan file says each "
                            "layer's \"fp8\": set it there (search/run.py --fp8 writes it) or drop --fp8")
        plan = plan_mod.load(args.galvatron_config, world_size=world_size)
    else:
        if args.pp_deg < 1 or world_size % args.pp_deg:
            raise UserError(f"--pp-deg {args.pp_deg} does not divide the world size {world_size}")
        stage_world = world_size // args.pp_deg
        tp = args.global_tp_deg
        if tp < 1 or stage_world % tp:
            raise UserError(f"--global-tp-deg {tp} does not divide world_size / pp_deg = {stage_world}")
        dp = stage_world // tp
        chunks = args.chunks
        if chunks == AUTO:
            chunks = galvatron_chunks(world_size, args.pp_deg, args.global_batch_size)
        if chunks is None:
            mbs = args.micro_batch_size or max(1, args.global_batch_size // dp)
            if args.global_batch_size % (mbs * dp):
                raise UserError(f"--global-batch-size {args.global_batch_size} is not divisible by "
                                f"--micro-batch-size {mbs} x data-parallel size {dp}")
            chunks = args.global_batch_size // (mbs * dp)
        dp_type = "zero3" if args.sdp else args.default_dp_type
        vocab_tp = args.vocab_tp or tp
        vocab_dp_type = dp_type if args.vocab_sdp is None else ("zero3" if args.vocab_sdp else args.default_dp_type)
        plan = plan_mod.uniform(world_size, cfg.num_layers, pp_deg=args.pp_deg, tp=tp,
                                tp_consec=bool(args.global_tp_consec), dp_type=dp_type, sp=args.sequence_parallel,
                                checkpoint=bool(args.global_checkpoint), global_bsz=args.global_batch_size,
                                chunks=chunks, pipeline_type=args.pipeline_type, vocab_tp=vocab_tp, fp8=args.fp8,
                                fp8_skip_first=args.fp8_skip_first, fp8_skip_last=args.fp8_skip_last)
        plan.vocab = plan_mod.VocabStrategy(tp=vocab_tp, tp_consec=bool(args.global_tp_consec),
                                            dp_type=vocab_dp_type, sp=args.sequence_parallel and vocab_tp > 1)
        if args.recompute_block_layers:  # Megatron's block method: the first N layers of each stage
            first = 0
            for n in plan.pp_division:
                for i in range(first, first + min(n, args.recompute_block_layers)):
                    plan.layers[i] = dataclasses.replace(plan.layers[i], checkpoint=True)
                first += n
    return check_against_plan(args, plan.validate(cfg, world_size=world_size, gpus_per_node=launch_gpus_per_node()))

