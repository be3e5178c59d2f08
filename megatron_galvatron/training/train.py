"""Set up a run from flags and train: one step goes data -> schedule (forward/backward over
micro-batches, through the stage model's layers and their collectives) -> gradient sync ->
clip -> AdamW (skipped when the gradient norm is NaN/Inf) -> LR schedule. After each step the
loop logs, evaluates and saves as due, and stops early when every rank agrees to
(training/preemption.py)."""
import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from functools import partial
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint import tokenizer_files
from megatron_galvatron.checkpoint.async_save import PendingSave, start_save
from megatron_galvatron.checkpoint.collective import agree
from megatron_galvatron.checkpoint.host_staging import HostStaging
from megatron_galvatron.checkpoint.save import owned_layout
from megatron_galvatron.errors import UserError
from megatron_galvatron.fp8.library import float8
from megatron_galvatron.model.config import GPTConfig, config_from_args
from megatron_galvatron.model.parallelize import ParallelModel, parallelize
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.parallel_state import (ParallelState, detect_device, init_distributed, launch_gpus_per_node,
                                             launch_world_size)
from megatron_galvatron.pipeline.p2p import P2P
from megatron_galvatron.pipeline.schedules import Schedule, StepStats, forward_only
from megatron_galvatron.plan import Plan
from megatron_galvatron.training import arguments, metrics
from megatron_galvatron.training.config import TrainingConfig
from megatron_galvatron.training.log_writers import Writers, iteration_line
from megatron_galvatron.training.nonfinite import SkippedSteps, step_if_finite
from megatron_galvatron.training.optimizer import LRSchedule, build_optimizer
from megatron_galvatron.training.preemption import EarlyExit, SignalFlag, agree_any


@dataclass
class Trainer:
    config: TrainingConfig
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
    save_lock: object = None  # rank 0's hold on --save for the life of the run (checkpoint/lock.py)
    pending_save: Optional[PendingSave] = None  # --async-save: files still being written
    host_staging: HostStaging = field(default_factory=HostStaging)  # --async-save's host buffers, kept between saves
    started: float = field(default_factory=time.monotonic)  # for --exit-duration-in-mins
    carried: dict = field(default_factory=dict)  # meta.json fields every save writes again (checkpoint.format.CARRIED)

    @property
    def device(self):
        return self.ps.device

    @property
    def stage(self) -> StageModel:
        return self.model.stage

    def checkpoint_state(self) -> checkpoint.TrainingState:
        return checkpoint.TrainingState(self.stage, self.plan, self.optimizer, self.lr_schedule,
                                        checkpoint.Progress(self.iteration, self.consumed_samples),
                                        self.config.optimizer, self.config.seed, self.carried)


def build_datasets(config: TrainingConfig, cfg: GPTConfig, plan: Plan, consumed_samples: int = 0, iteration: int = 0):
    # A resumed run reads on from consumed_samples, possibly with another global batch size.
    iters, ev, seed = config.train_iters, config.eval, config.seed
    n_train = max(iters * plan.global_bsz, consumed_samples + max(0, iters - iteration) * plan.global_bsz)
    n_eval = (iters // ev.interval + 1) * ev.iters * plan.global_bsz if ev.interval and ev.iters \
        else ev.iters * plan.global_bsz
    if config.data.path:
        from megatron_galvatron.data.gpt_dataset import build_train_valid_test_datasets
        train, valid, _ = build_train_valid_test_datasets(config.data.path, config.data.split, cfg.seq_length, seed,
                                                          (n_train, n_eval, 0), order=config.data.order)
        return train, valid
    from megatron_galvatron.data.mock_dataset import MockGPTDataset
    train = MockGPTDataset(cfg.seq_length, cfg.vocab_size, seed, n_train)
    valid = MockGPTDataset(cfg.seq_length, cfg.vocab_size, seed + 1, max(n_eval, 1))
    return train, valid


def setup(args, plan: Optional[Plan] = None, stop_if_trained: bool = False) -> Trainer:
    """The run the flags describe, ready to train. stop_if_trained: raise AlreadyTrained, before
    any model is built, when --load holds a checkpoint at or past --train-iters."""
    started = time.monotonic()
    config = arguments.training_config(args)
    # The plan is checked before any process group exists: a bad one is then one line and exit
    # 2 on every rank, with no collective library to start and tear down.
    world = launch_world_size()
    cfg = config_from_args(args)
    run_tokenizer = tokenizer_files.from_args(args)  # recorded in every save, for an export to ship
    plan = (plan.validate(cfg, world_size=world, gpus_per_node=launch_gpus_per_node()) if plan
            else arguments.build_plan(args, cfg, world))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = detect_device(local_rank)
    rank, world = init_distributed(device, config.resilience.distributed_timeout_mins)
    if args.compile and not plan.compile:  # the flag asks what a searched plan may say itself
        plan = dataclasses.replace(plan, compile=True)
    if plan.has_fp8:
        float8()  # before any model is built: without torchao, one line saying how to get it
    ps = ParallelState(plan, rank, world, device)
    save_lock = _claim_save(config, ps)
    try:
        _inspect_load(config, cfg, ps, stop_if_trained)  # a bad --load stops here, before the model is built
    except BaseException:
        if save_lock is not None:
            save_lock.release()
        raise
    # Replicated dropout draws from the default stream: offset it per pipeline stage (as
    # Megatron does) so that stages do not repeat each other's masks.
    torch.manual_seed(config.seed + 100 * ps.pp_rank)
    # Python's and numpy's global streams too (nothing here draws from them, but a checkpoint
    # records them): seeded by the OS, two runs of one command would save different bytes.
    random.seed(config.seed + 100 * ps.pp_rank)
    np.random.seed(config.seed + 100 * ps.pp_rank)
    stage = StageModel(cfg, plan, ps, config.seed)
    model = parallelize(stage, plan, config.bf16)
    opt, lr = config.optimizer, config.lr
    optimizer = build_optimizer(stage, lr.lr, opt.weight_decay, opt.betas, opt.eps)
    sched = LRSchedule(lr.lr, lr.min_lr, lr.warmup_iters, lr.decay_iters, lr.decay_style)
    tr = Trainer(config, cfg, plan, ps, model, optimizer, sched, None, None, save_lock=save_lock, started=started)
    _start_from_checkpoint(tr)
    if run_tokenizer:
        tr.carried["tokenizer"] = run_tokenizer
    tr.train_data, tr.valid_data = build_datasets(config, cfg, plan, tr.consumed_samples, tr.iteration)
    return tr


class AlreadyTrained(Exception):
    """--load holds a checkpoint at or past --train-iters: a finished run launched again, which
    has nothing to do and is not an error."""


def _claim_save(config: TrainingConfig, ps: ParallelState):
    """Check --save and claim it before --load is read: a second run into the same root stops
    here, naming the first, rather than interleaving checkpoints with it."""
    if not config.checkpoint.save:
        return None
    return checkpoint.lock_save_root(config.checkpoint.save, ps.rank)


def _resumes_in_place(ck) -> bool:
    # --load X --save X is the resume-or-start idiom: an empty X starts from scratch.
    return bool(ck.save) and os.path.realpath(ck.save) == os.path.realpath(ck.load)


def _inspect_load(config: TrainingConfig, cfg: GPTConfig, ps: ParallelState, stop_if_trained: bool) -> None:
    ck = config.checkpoint
    if not ck.load:
        return
    found = agree(checkpoint.inspect, ck.load, cfg, _resumes_in_place(ck))
    if found is None or ck.finetune or config.eval.skip_train or not stop_if_trained:
        return
    d, meta, _ = found
    if meta["iteration"] >= config.train_iters:
        raise AlreadyTrained(f"nothing to train: the checkpoint {d} is at iteration {meta['iteration']} and "
                             f"--train-iters is {config.train_iters}; raise --train-iters to train on")


def _start_from_checkpoint(tr: Trainer) -> None:
    """Take what --load holds (_inspect_load has read and checked its meta.json already)."""
    ck, rank = tr.config.checkpoint, tr.ps.rank
    if not ck.load:
        return
    same = _resumes_in_place(ck)
    loaded = checkpoint.load(tr.checkpoint_state(), ck.load, missing_ok=same, finetune=ck.finetune,
                             load_optim=ck.load_optim, load_rng=ck.load_rng)
    if loaded is None:
        return
    tr.iteration, tr.consumed_samples = loaded.progress.iteration, loaded.progress.consumed_samples
    tr.carried = dict(loaded.carried)
    if rank == 0:
        print(f"loaded checkpoint {loaded.directory} at iteration {tr.iteration} "
              f"({tr.consumed_samples} samples consumed)", flush=True)
    if same:
        tr.last_saved_iteration = tr.iteration


def _microbatches(tr: Trainer, dataset, start_sample: int):
    """The step's micro-batches as (tokens, labels) [batch, seq] on device: every rank of the
    first and last stage reads the whole global micro-batch and keeps its own DP share later."""
    sizes = tr.plan.micro_batch_sizes
    if not (tr.ps.is_first_stage or tr.ps.is_last_stage):
        return [(None, None)] * len(sizes)
    out = []
    for c, mb in enumerate(sizes):
        first = start_sample + sum(sizes[:c])
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

    def shapes(layout):  # one per micro-batch: they differ when the chunks do not split the batch evenly
        dp = plan.stage_world // layout.tp
        seq = cfg.seq_length // layout.tp if layout.sp else cfg.seq_length
        return [(seq, mb // dp, cfg.hidden_size) for mb in plan.micro_batch_sizes]

    prev_rank = ps.rank_in_stage(ps.pp_rank - 1) if not ps.is_first_stage else None
    next_rank = ps.rank_in_stage(ps.pp_rank + 1) if not ps.is_last_stage else None
    return P2P(prev_rank, next_rank, shapes(stage.input_layout), shapes(stage.output_layout), dtype, ps.device)


def train_step(tr: Trainer) -> StepStats:
    batches = _microbatches(tr, tr.train_data, tr.consumed_samples)
    dtype = torch.bfloat16 if tr.config.bf16 else torch.float32
    tr.stage.train()
    tr.model.zero_grad()
    schedule = Schedule(tr.plan.pipeline_type, tr.plan.pp_deg, tr.ps.pp_rank, tr.plan.num_micro_batches, _p2p(tr, dtype),
                        partial(_forward_fn, tr, batches), tr.model.start_microbatch)
    with tr.model.compute():
        stats = schedule.run(tr.device)
    tr.model.finish_grad_sync()
    stats.grad_norm = tr.model.clip_grads(tr.config.optimizer.clip_grad)
    stats.skipped = ~torch.isfinite(stats.grad_norm)
    stats.lr = tr.lr_schedule.apply(tr.optimizer, tr.iteration)
    step_if_finite(tr.optimizer, ~stats.skipped)
    tr.iteration += 1
    tr.consumed_samples += tr.plan.global_bsz
    return stats


def evaluate(tr: Trainer, iters: Optional[int] = None) -> float:
    """Mean validation loss over the first `iters` global batches of the valid split (the same
    batches every time, so evaluations are comparable), forward only. Same value on every rank."""
    iters = tr.config.eval.iters if iters is None else iters
    if iters < 1:
        raise UserError("evaluation needs --eval-iters N with N >= 1")
    if tr.valid_data is None:
        raise UserError("evaluation needs a validation split: give --split a non-zero valid weight (e.g. 949,50,1)")
    dtype = torch.bfloat16 if tr.config.bf16 else torch.float32
    tr.stage.eval()
    total = torch.zeros((), device=tr.device)
    with tr.model.compute():
        for k in range(iters):
            batches = _microbatches(tr, tr.valid_data, k * tr.plan.global_bsz)
            total += forward_only(tr.ps.is_last_stage, tr.plan.num_micro_batches, _p2p(tr, dtype),
                                  partial(_forward_fn, tr, batches), tr.device)
    tr.stage.train()
    for module in tr.model.sharded:  # zero2 keeps parameters gathered after a forward without backward
        module.reshard()
    loss = reduce_loss(tr, total) / iters
    if tr.ps.world_size > 1:
        dist.broadcast(loss, src=tr.ps.world_size - 1)
    return loss.item()


def save_checkpoint(tr: Trainer) -> Optional[str]:
    """Save the run at this iteration (every rank). Under --async-save the files are written in
    the background and published by publish_save; returns the directory once it is published."""
    t0 = time.perf_counter()
    publish_save(tr)  # a save begins only after the previous one is complete
    tr.last_saved_iteration = tr.iteration
    if tr.config.resilience.async_save:
        tr.pending_save = start_save(tr.checkpoint_state(), tr.config.checkpoint.save, tr.host_staging)
        if tr.ps.rank == 0:
            pinned = tr.host_staging.nbytes
            print(f"saving checkpoint at iteration {tr.iteration} in the background (training waited "
                  f"{time.perf_counter() - t0:.2f} s" + (f"; {pinned / 2 ** 30:.1f} GiB of page-locked host buffers"
                                                         if pinned else "") + ")", flush=True)
        return None
    if tr.ps.rank == 0:  # a large model's save takes minutes: say so before it starts
        print(f"saving checkpoint at iteration {tr.iteration} to {tr.config.checkpoint.save}", flush=True)
    path = checkpoint.save(tr.checkpoint_state(), tr.config.checkpoint.save)
    if tr.ps.rank == 0:
        print(f"saved checkpoint {path} at iteration {tr.iteration} in {time.perf_counter() - t0:.2f} s", flush=True)
    return path


def publish_save(tr: Trainer) -> Optional[str]:
    """Wait for a background save's files and publish the checkpoint (every rank at once)."""
    pending, tr.pending_save = tr.pending_save, None
    if pending is None:
        return None
    path = pending.commit()
    if tr.ps.rank == 0:
        print(f"saved checkpoint {path} at iteration {pending.iteration} "
              f"({time.perf_counter() - pending.started:.2f} s after it began)", flush=True)
    return path


def _stop_reason(tr: Trainer, early: EarlyExit) -> Optional[str]:
    """Why every rank stops after this step (None: go on). Publishes a background save once every
    rank has written its files: both are agreed in one small all-reduce, made only when needed."""
    writing = tr.pending_save is not None
    agreed = []
    if early.needs_agreement or writing:
        agreed = agree_any(early.local_flags() + [writing and not tr.pending_save.written()],
                           tr.ps.world_group, tr.device)
        if writing and not agreed[-1]:
            publish_save(tr)
    return early.reason(tr.iteration, agreed[:-1])


def _evaluate_and_log(tr: Trainer, writer) -> float:
    loss = evaluate(tr)
    rec = {"iteration": tr.iteration, "validation_loss": loss}
    tr.eval_log.append(rec)
    if is_logging_rank(tr):
        print(f"iteration {tr.iteration:>6} | validation loss: {loss:.6E}", flush=True)
        if writer is not None:
            writer(rec, training=False)
    return loss


def _periodic(tr: Trainer, writer) -> float:
    """Evaluation and checkpoint due after this iteration; returns the seconds they took."""
    ev, ck, t0 = tr.config.eval, tr.config.checkpoint, time.perf_counter()
    if ev.interval and ev.iters and tr.iteration % ev.interval == 0:
        _evaluate_and_log(tr, writer)
    if ck.save and ck.save_interval and tr.iteration % ck.save_interval == 0:
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
    with SignalFlag(tr.config.resilience.exit_signal_handler) as flag:
        return _train(tr, EarlyExit(tr.config.resilience, tr.started, flag))


def _train(tr: Trainer, early: EarlyExit) -> List[dict]:
    config, log = tr.config, tr.config.logging
    if config.eval.skip_train:
        loss = evaluate(tr)
        tr.eval_log.append({"iteration": tr.iteration, "validation_loss": loss})
        if is_logging_rank(tr):
            print(f"validation loss: {loss:.6E}", flush=True)
        return tr.log
    if tr.iteration >= config.train_iters:  # a finished run launched again: done, not an error
        if tr.ps.rank == 0:
            print(f"nothing to train: the checkpoint loaded is at iteration {tr.iteration} and --train-iters is "
                  f"{config.train_iters}; raise --train-iters to train on", flush=True)
        return tr.log
    writer = Writers(log, run_config(tr)) if is_logging_rank(tr) else None
    try:
        return _train_loop(tr, early, writer)
    finally:
        if writer is not None:
            writer.close()


def run_config(tr: Trainer) -> dict:
    """What a W&B run records as its configuration: the model, the plan and the settings."""
    return {"model": tr.cfg.to_dict(), "plan": tr.plan.to_dict(), "training": dataclasses.asdict(tr.config),
            "world_size": tr.ps.world_size}


def _train_loop(tr: Trainer, early: EarlyExit, writer: Optional[Writers]) -> List[dict]:
    config, log, device = tr.config, tr.config.logging, tr.device
    flops_token = tr.cfg.flops_per_token()
    peak = metrics.peak_flops(device) if config.bf16 else None
    tokens_per_iter = tr.plan.global_bsz * tr.cfg.seq_length
    interval_loss, interval_n = torch.zeros((), device=device), 0
    interval_nan = torch.zeros((), dtype=torch.int64, device=device)
    skipped = SkippedSteps(device, config.resilience.max_skipped_steps)
    metrics.synchronize(device)
    t0 = time.perf_counter()
    while tr.iteration < config.train_iters:
        stats = train_step(tr)
        if config.resilience.async_save and config.checkpoint.save and not tr.host_staging.preparing:
            # AdamW's state exists now
            tr.host_staging.prepare(owned_layout(tr.checkpoint_state()))
        interval_loss += torch.where(stats.skipped, 0.0, stats.loss_sum)  # a skipped step's loss is left out
        interval_n += 1
        interval_nan += ~torch.isfinite(stats.loss_sum)
        skipped.add(stats.skipped)
        stop = _stop_reason(tr, early)
        if tr.iteration % log.interval == 0 or tr.iteration == config.train_iters or stop:
            n_skipped = skipped.read(tr.iteration)
            n_good = interval_n - n_skipped
            loss = (reduce_loss(tr, interval_loss) / n_good).item() if n_good else float("nan")
            grad_norm = stats.grad_norm.item()
            metrics.synchronize(device)
            dt = (time.perf_counter() - t0) / interval_n
            tps = tokens_per_iter / dt / tr.ps.world_size
            tflops = tps * flops_token / 1e12
            rec = {"iteration": tr.iteration, "consumed_samples": tr.consumed_samples,
                   "global_batch_size": tr.plan.global_bsz, "loss": loss, "lr": stats.lr, "grad_norm": grad_norm,
                   "iter_time_s": dt, "tokens_per_s_per_gpu": tps, "tflops_per_gpu": tflops,
                   "peak_mem_gb": metrics.peak_memory_gb(device), "max_live_microbatches": stats.max_live_microbatches,
                   "skipped": n_skipped, "nan_iterations": int(interval_nan.item())}
            if peak:
                rec["mfu"] = tflops * 1e12 / peak
            tr.log.append(rec)
            if is_logging_rank(tr):
                print(iteration_line(rec, config.train_iters), flush=True)
                writer(rec)
            interval_loss.zero_()
            interval_nan.zero_()
            interval_n = 0
            t0 = time.perf_counter()
        t0 += _periodic(tr, writer)  # not counted in the iteration time
        if stop:
            if tr.ps.rank == 0:
                print(f"exiting at iteration {tr.iteration}: {stop}; saving a checkpoint to resume from", flush=True)
            break
    if config.checkpoint.save and tr.last_saved_iteration != tr.iteration:
        save_checkpoint(tr)
    publish_save(tr)
    return tr.log
