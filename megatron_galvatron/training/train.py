"""Set up a run from flags and train: one step goes data -> schedule (forward/backward over
micro-batches, through the stage model's layers and their collectives) -> gradient sync ->
clip -> AdamW -> LR schedule."""
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_galvatron.errors import UserError
from megatron_galvatron.optional import import_optional
from megatron_galvatron.model.config import GPTConfig, config_from_args
from megatron_galvatron.model.parallelize import ParallelModel, parallelize
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.parallel_state import ParallelState, detect_device, init_distributed
from megatron_galvatron.pipeline.p2p import P2P
from megatron_galvatron.pipeline.schedules import Schedule, StepStats, forward_only
from megatron_galvatron.plan import Plan
from megatron_galvatron.training import arguments, checkpointing, metrics
from megatron_galvatron.training.optimizer import LRSchedule, build_optimizer


@dataclass
class Trainer:
    args: object
    cfg: GPTConfig
    plan: Plan
    ps: ParallelState
    model: ParallelModel
    optimizer: torch.optim.Optimizer
    lr_schedule: LRSchedule
    train_data: object
    valid_data: object = None
    iteration: int = 0
    consumed_samples: int = 0
    log: List[dict] = field(default_factory=list)
    eval_log: List[dict] = field(default_factory=list)
    last_saved_iteration: Optional[int] = None  # under --save, to skip saving the same state twice

    @property
    def device(self):
        return self.ps.device

    @property
    def stage(self) -> StageModel:
        return self.model.stage


def build_datasets(args, cfg: GPTConfig, plan: Plan, consumed_samples: int = 0, iteration: int = 0):
    # A resumed run reads on from consumed_samples, possibly with another global batch size.
    n_train = max(args.train_iters * plan.global_bsz,
                  consumed_samples + max(0, args.train_iters - iteration) * plan.global_bsz)
    n_eval = (args.train_iters // args.eval_interval + 1) * args.eval_iters * plan.global_bsz \
        if args.eval_interval and args.eval_iters else args.eval_iters * plan.global_bsz
    if args.data_path:
        from megatron_galvatron.data.gpt_dataset import build_train_valid_test_datasets
        train, valid, _ = build_train_valid_test_datasets(args.data_path, args.split, cfg.seq_length, args.seed,
                                                          (n_train, n_eval, 0))
        return train, valid
    from megatron_galvatron.data.mock_dataset import MockGPTDataset
    train = MockGPTDataset(cfg.seq_length, cfg.vocab_size, args.seed, n_train)
    valid = MockGPTDataset(cfg.seq_length, cfg.vocab_size, args.seed + 1, max(n_eval, 1))
    return train, valid


def setup(args, plan: Optional[Plan] = None) -> Trainer:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = detect_device(local_rank)
    rank, world = init_distributed(device)
    cfg = config_from_args(args)
    plan = plan.validate(cfg, world_size=world) if plan else arguments.build_plan(args, cfg, world)
    if args.compile and not plan.compile:  # the flag asks what a searched plan may say itself
        plan = dataclasses.replace(plan, compile=True)
    ps = ParallelState(plan, rank, world, device)
    # Replicated dropout draws from the default stream: offset it per pipeline stage (as
    # Megatron does) so that stages do not repeat each other's masks.
    torch.manual_seed(args.seed + 100 * ps.pp_rank)
    stage = StageModel(cfg, plan, ps, args.seed)
    model = parallelize(stage, plan, args.bf16)
    optimizer = build_optimizer(stage, args.lr, args.weight_decay, (args.adam_beta1, args.adam_beta2), args.adam_eps)
    decay = args.lr_decay_iters or args.train_iters
    sched = LRSchedule(args.lr, args.min_lr, args.lr_warmup_iters, decay, args.lr_decay_style)
    tr = Trainer(args, cfg, plan, ps, model, optimizer, sched, None, None)
    save_dir, load_dir = getattr(args, "save", None), getattr(args, "load", None)
    if save_dir:
        checkpointing.check_writable(save_dir, rank)
    if load_dir:
        # --load X --save X is the resume-or-start idiom: an empty X starts from scratch.
        same = bool(save_dir) and os.path.realpath(save_dir) == os.path.realpath(load_dir)
        loaded = checkpointing.load_checkpoint(tr, load_dir, missing_ok=same, finetune=getattr(args, "finetune", False),
                                               load_optim=not getattr(args, "no_load_optim", False),
                                               load_rng=not getattr(args, "no_load_rng", False))
        if loaded and rank == 0:
            print(f"loaded checkpoint {loaded} at iteration {tr.iteration} "
                  f"({tr.consumed_samples} samples consumed)", flush=True)
        if loaded and same:
            tr.last_saved_iteration = tr.iteration
    tr.train_data, tr.valid_data = build_datasets(args, cfg, plan, tr.consumed_samples, tr.iteration)
    return tr


def _microbatches(tr: Trainer, dataset, start_sample: int):
    """The step's micro-batches as (tokens, labels) [batch, seq] on device: every rank of the
    first and last stage reads the whole global micro-batch and keeps its own DP share later."""
    if not (tr.ps.is_first_stage or tr.ps.is_last_stage):
        return [(None, None)] * tr.plan.chunks
    mb = tr.plan.global_micro_batch_size
    out = []
    for c in range(tr.plan.chunks):
        first = start_sample + c * mb
        rows = np.stack([dataset[i] for i in range(first, first + mb)]).astype(np.int64)
        if rows.max() >= tr.cfg.vocab_size or rows.min() < 0:
            raise UserError(f"the data holds token id {int(rows.max())} but --vocab-size is {tr.cfg.vocab_size}: "
                            f"set --vocab-size to the tokenizer's vocabulary size (at least {int(rows.max()) + 1})")
        t = torch.from_numpy(rows)
        if tr.device.type == "cuda":  # from pageable memory the copy would wait for the GPU to drain
            t = t.pin_memory()
        t = t.to(tr.device, non_blocking=True)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def _forward_fn(tr: Trainer, batches, i: int, x):
    stage = tr.stage
    tokens, labels = batches[i]
    if tr.ps.is_first_stage:
        x = stage.local_tokens(tokens)
    local_labels = None
    if tr.ps.is_last_stage:
        rows = stage.batch_block(stage.vocab_layout, labels.shape[0])
        local_labels = labels[rows].t()
    out = stage(x, local_labels)
    if tr.ps.is_last_stage:
        # Summed per-token loss over the global token count: the sum over DP shards and
        # micro-batches is the mean loss, and every DP reduction is a plain sum.
        return out.float().sum() / (tr.plan.global_bsz * tr.cfg.seq_length)
    return out


def _p2p(tr: Trainer, dtype) -> Optional[P2P]:
    ps, plan, cfg = tr.ps, tr.plan, tr.cfg
    if plan.pp_deg == 1:
        return None
    stage = tr.stage

    def shape(layout):
        dp = plan.stage_world // layout.tp
        seq = cfg.seq_length // layout.tp if layout.sp else cfg.seq_length
        return (seq, plan.global_micro_batch_size // dp, cfg.hidden_size)

    prev_rank = ps.rank_in_stage(ps.pp_rank - 1) if not ps.is_first_stage else None
    next_rank = ps.rank_in_stage(ps.pp_rank + 1) if not ps.is_last_stage else None
    return P2P(prev_rank, next_rank, shape(stage.input_layout), shape(stage.output_layout), dtype, ps.device)


def train_step(tr: Trainer) -> StepStats:
    batches = _microbatches(tr, tr.train_data, tr.consumed_samples)
    dtype = torch.bfloat16 if tr.args.bf16 else torch.float32
    tr.stage.train()
    tr.model.zero_grad()
    schedule = Schedule(tr.plan.pipeline_type, tr.plan.pp_deg, tr.ps.pp_rank, tr.plan.chunks, _p2p(tr, dtype),
                        partial(_forward_fn, tr, batches), tr.model.start_microbatch)
    with tr.model.compute():
        stats = schedule.run(tr.device)
    tr.model.finish_grad_sync()
    stats.grad_norm = tr.model.clip_grads(tr.args.clip_grad)
    stats.lr = tr.lr_schedule.apply(tr.optimizer, tr.iteration)
    tr.optimizer.step()
    tr.iteration += 1
    tr.consumed_samples += tr.plan.global_bsz
    return stats


def evaluate(tr: Trainer, iters: Optional[int] = None) -> float:
    """Mean validation loss over the first `iters` global batches of the valid split (the same
    batches every time, so evaluations are comparable), forward only. Same value on every rank."""
    iters = tr.args.eval_iters if iters is None else iters
    if iters < 1:
        raise UserError("evaluation needs --eval-iters N with N >= 1")
    if tr.valid_data is None:
        raise UserError("evaluation needs a validation split: give --split a non-zero valid weight (e.g. 949,50,1)")
    dtype = torch.bfloat16 if tr.args.bf16 else torch.float32
    tr.stage.eval()
    total = torch.zeros((), device=tr.device)
    with tr.model.compute():
        for k in range(iters):
            batches = _microbatches(tr, tr.valid_data, k * tr.plan.global_bsz)
            total += forward_only(tr.ps.is_last_stage, tr.plan.chunks, _p2p(tr, dtype),
                                  partial(_forward_fn, tr, batches), tr.device)
    tr.stage.train()
    for module in tr.model.sharded:  # zero2 keeps parameters gathered after a forward without backward
        module.reshard()
    loss = reduce_loss(tr, total) / iters
    if tr.ps.world_size > 1:
        dist.broadcast(loss, src=tr.ps.world_size - 1)
    return loss.item()


def save_checkpoint(tr: Trainer) -> str:
    t0 = time.perf_counter()
    path = checkpointing.save_checkpoint(tr, tr.args.save)
    tr.last_saved_iteration = tr.iteration
    if tr.ps.rank == 0:
        print(f"saved checkpoint {path} at iteration {tr.iteration} in {time.perf_counter() - t0:.2f} s", flush=True)
    return path


def _evaluate_and_log(tr: Trainer, writer) -> float:
    loss = evaluate(tr)
    rec = {"iteration": tr.iteration, "validation_loss": loss}
    tr.eval_log.append(rec)
    if is_logging_rank(tr):
        print(f"iteration {tr.iteration:>6} | validation loss: {loss:.6E}", flush=True)
        if writer is not None:
            writer(rec)
    return loss


def _periodic(tr: Trainer, writer) -> float:
    """Evaluation and checkpoint due after this iteration; returns the seconds they took."""
    args, t0 = tr.args, time.perf_counter()
    if args.eval_interval and args.eval_iters and tr.iteration % args.eval_interval == 0:
        _evaluate_and_log(tr, writer)
    if args.save and args.save_interval and tr.iteration % args.save_interval == 0:
        save_checkpoint(tr)
    return time.perf_counter() - t0


def reduce_loss(tr: Trainer, loss_sum: torch.Tensor) -> torch.Tensor:
    """Mean loss over the global batch: sum the last stage's DP shares (TP ranks hold copies)."""
    loss = loss_sum.clone()
    if tr.ps.is_last_stage:
        g = tr.stage.vocab_groups.dp_group
        if g is not None:
            dist.all_reduce(loss, group=g)
    return loss


def is_logging_rank(tr: Trainer) -> bool:
    return tr.ps.rank == tr.ps.world_size - 1  # on the last stage, where the loss is


def train(tr: Trainer) -> List[dict]:
    args, device = tr.args, tr.device
    if getattr(args, "skip_train", False):
        loss = evaluate(tr)
        tr.eval_log.append({"iteration": tr.iteration, "validation_loss": loss})
        if is_logging_rank(tr):
            print(f"validation loss: {loss:.6E}", flush=True)
        return tr.log
    flops_token = tr.cfg.flops_per_token()
    peak = metrics.peak_flops(device) if args.bf16 else None
    tokens_per_iter = tr.plan.global_bsz * tr.cfg.seq_length
    writer = _writer(args.tensorboard_dir) if is_logging_rank(tr) else None
    interval_loss, interval_n = torch.zeros((), device=device), 0
    metrics.synchronize(device)
    t0 = time.perf_counter()
    while tr.iteration < args.train_iters:
        stats = train_step(tr)
        interval_loss += stats.loss_sum
        interval_n += 1
        if tr.iteration % args.log_interval == 0 or tr.iteration == args.train_iters:
            loss = (reduce_loss(tr, interval_loss) / interval_n).item()
            grad_norm = stats.grad_norm.item()
            metrics.synchronize(device)
            dt = (time.perf_counter() - t0) / interval_n
            tps = tokens_per_iter / dt / tr.ps.world_size
            tflops = tps * flops_token / 1e12
            rec = {"iteration": tr.iteration, "loss": loss, "lr": stats.lr, "grad_norm": grad_norm,
                   "iter_time_s": dt, "tokens_per_s_per_gpu": tps, "tflops_per_gpu": tflops,
                   "peak_mem_gb": metrics.peak_memory_gb(device), "max_live_microbatches": stats.max_live_microbatches}
            if peak:
                rec["mfu"] = tflops * 1e12 / peak
            tr.log.append(rec)
            if is_logging_rank(tr):
                _print_iteration(rec, args.train_iters)
                if writer is not None:
                    writer(rec)
                if args.metrics_json:
                    with open(args.metrics_json, "a") as f:
                        f.write(json.dumps(rec) + "\n")
            if args.exit_on_nonfinite and not np.isfinite(loss):
                raise UserError(f"loss became {loss} at iteration {tr.iteration}: lower --lr or check the data")
            interval_loss.zero_()
            interval_n = 0
            t0 = time.perf_counter()
        t0 += _periodic(tr, writer)  # not counted in the iteration time
    if args.save and tr.last_saved_iteration != tr.iteration:
        save_checkpoint(tr)
    return tr.log


def _print_iteration(rec: dict, total: int) -> None:
    parts = [f"iteration {rec['iteration']:>6}/{total}", f"loss: {rec['loss']:.6E}", f"lr: {rec['lr']:.4E}",
             f"grad norm: {rec['grad_norm']:.4f}", f"time/iter: {rec['iter_time_s'] * 1000:.1f} ms",
             f"tokens/s/GPU: {rec['tokens_per_s_per_gpu']:.1f}", f"TFLOP/s/GPU: {rec['tflops_per_gpu']:.2f}"]
    if "mfu" in rec:
        parts.append(f"MFU: {rec['mfu']:.3f}")
    parts.append(f"peak mem: {rec['peak_mem_gb']:.2f} GB")
    print(" | ".join(parts), flush=True)


def _writer(tb_dir: Optional[str]):
    if not tb_dir:
        return None
    os.makedirs(tb_dir, exist_ok=True)
    tb = import_optional("torch.utils.tensorboard", f"TensorBoard events in {tb_dir} (scalars.jsonl written instead)",
                         "pip install tensorboard")
    if tb is not None:
        w = tb.SummaryWriter(tb_dir)
        return lambda rec: [w.add_scalar(k, v, rec["iteration"]) for k, v in rec.items() if k != "iteration"]
    path = os.path.join(tb_dir, "scalars.jsonl")

    def write(rec):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return write
