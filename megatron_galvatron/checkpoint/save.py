"""Saving a run on every rank at once. Instead of collecting the model on one rank, the work is
spread: inside a stage each parameter is gathered (FSDP full_tensor, TP all-gather) and written
by one owner rank, owners chosen to balance bytes. Rank 0 holds the root's lock (lock.py) while
it writes, and nothing is written when any rank's weights or optimizer state are not finite."""
import json
import os
from functools import partial
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megatron_galvatron.checkpoint.architecture import config_record
from megatron_galvatron.checkpoint.atomic import begin_save, commit_save, fsync_dir, write_bytes
from megatron_galvatron.checkpoint.collective import agree, broadcast
from megatron_galvatron.checkpoint.format import CheckpointError, complete, rng_file, shard_stem, training_meta
from megatron_galvatron.checkpoint.lock import RootLock, acquire
from megatron_galvatron.checkpoint.rng import rng_state
from megatron_galvatron.checkpoint.shards import entries, is_tied_copy
from megatron_galvatron.checkpoint.host_staging import HostStaging
from megatron_galvatron.model.canonical import host_copy, full_tensor
from megatron_galvatron.checkpoint.state import TrainingState
from megatron_galvatron.checkpoint.tensors import ShardWriter, all_finite


def _probe(root: str) -> None:
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"--save {root}: {e.strerror or e}; choose a writable directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise CheckpointError(f"--save {root} is not writable: choose a writable directory")


def check_writable(root: str, rank: int) -> None:
    """Fail at start-up, not after hours of training, when --save cannot be written."""
    agree(lambda: _probe(root) if rank == 0 else None)


def lock_save_root(root: str, rank: int) -> Optional[RootLock]:
    """check_writable, then rank 0 takes root's lock for as long as it keeps the returned
    RootLock (None on the other ranks): a second run saving into root stops here, at start-up,
    on every rank, naming the run that holds it."""
    def take():
        if rank != 0:
            return None
        _probe(root)
        return acquire(root)
    return agree(take)


def _state_tensors(optimizer, p) -> List[Tuple[str, torch.Tensor]]:
    out = []
    for k, v in sorted(optimizer.state.get(p, {}).items()):
        if isinstance(v, (int, float)):
            v = torch.tensor(float(v), dtype=torch.float64)
        if torch.is_tensor(v):
            out.append((k, v))
    return out


def _owners(stage_entries, n: int) -> List[int]:
    """Stage-local writer of each entry: largest first onto the least-loaded rank."""
    load, owner = [0] * n, [0] * len(stage_entries)
    sizes = [int(np.prod(e[2].full_shape)) for e in stage_entries]
    for j in sorted(range(len(stage_entries)), key=lambda j: (-sizes[j], j)):
        r = min(range(n), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += sizes[j]
    return owner


def _nonfinite(state: TrainingState) -> Optional[str]:
    """The first of this rank's parameters and optimizer states holding NaN or Inf, if any."""
    for cname, p, _, _ in entries(state.stage):
        for key, t in [("model/" + cname, p)] + [(f"optim/{k}/{cname}", v)
                                                 for k, v in _state_tensors(state.optimizer, p)]:
            if not all_finite(t.to_local() if hasattr(t, "to_local") else t):
                return key
    return None


def _check_finite(state: TrainingState, root: str) -> None:
    key = _nonfinite(state)
    if key:
        raise CheckpointError(f"refusing to save iteration {state.progress.iteration} under {root}: {key} holds NaN "
                              f"or Inf on rank {state.ps.rank} (the run diverged); nothing was written: resume "
                              f"from the last checkpoint with a lower --lr")


def _meta(state: TrainingState) -> dict:
    sched, opt, it = state.lr_schedule, state.optimizer_config, state.progress.iteration
    return dict(training_meta(
        iteration=it, consumed_samples=state.progress.consumed_samples, model=config_record(state.stage.cfg),
        plan=state.plan.to_dict(), world_size=state.ps.world_size,
        lr_schedule={"lr": sched.lr, "min_lr": sched.min_lr, "warmup": sched.warmup,
                     "decay_iters": sched.decay_iters, "style": sched.style, "next_lr": sched(it)},
        optimizer={"type": "AdamW", "betas": list(opt.betas), "eps": opt.eps, "weight_decay": opt.weight_decay},
        seed=state.seed), **state.carried)


def save(state: TrainingState, root: str) -> str:
    """Save the model, optimizer, progress, RNG streams and plan of a run under root; every rank
    calls it. Returns the new checkpoint's directory."""
    rank = state.ps.rank
    agree(_check_finite, state, root)  # before anything is gathered or written, one verdict for all ranks
    lock = agree(lambda: acquire(root) if rank == 0 else None)  # None: this process (the trainer) holds it
    try:
        return _save(state, root)
    finally:
        if lock is not None:
            lock.release()


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _entries_in_order(state: TrainingState):
    """(key, tensor, meta, TP group, whether this rank writes it) of every parameter and optimizer
    state of the stage, in the order every rank of the stage gathers them."""
    ps = state.ps
    stage_entries = [e for e in entries(state.stage) if not is_tied_copy(state.stage, e[0])]
    owners = _owners(stage_entries, state.plan.stage_world)
    for (cname, p, meta, group), owner in zip(stage_entries, owners):
        states = [(f"optim/{k}/{cname}", v) for k, v in _state_tensors(state.optimizer, p)]
        for key, t in [("model/" + cname, p)] + states:
            yield key, t, meta, group, owner == ps.local_idx


def owned_tensors(state: TrainingState, staging: Optional[HostStaging] = None) -> Iterator[Tuple[str, torch.Tensor]]:
    """(key, whole tensor on the host) of each parameter and optimizer state this rank writes.
    Collective: every rank of a stage takes part in gathering each entry (FSDP full_tensor, TP
    all-gather); only the owner copies the result to the host, through `staging` if given (then
    valid once staging.wait() returns), else into fresh memory. Either way a copy, which the next
    step cannot change."""
    for key, t, meta, group, mine in _entries_in_order(state):
        if not mine:
            full_tensor(t, meta, group, to_host=_keep)  # this rank's part in the gather
            continue
        yield key, full_tensor(t, meta, group, to_host=partial(staging.copy, key) if staging else host_copy)


def owned_layout(state: TrainingState) -> List[Tuple[str, Tuple[int, ...], torch.dtype, torch.device]]:
    """(key, whole shape, dtype, device) of what owned_tensors yields on this rank, without a collective."""
    return [(key, tuple(meta.full_shape) if t.ndim else (), t.dtype, t.device)
            for key, t, meta, _, mine in _entries_in_order(state) if mine]


def publish(root: str, name: str, tmp: str, meta: dict, writer: ShardWriter, rank: int, world: int) -> str:
    """Every rank's files are synced: rank 0 lists them all in meta.json and renames the
    directory into place. Every rank calls it; returns the checkpoint's directory."""
    parts = [(writer.files, writer.tensors)] * world
    if world > 1:
        dist.all_gather_object(parts, (writer.files, writer.tensors))

    def commit():
        if rank != 0:
            return None
        files, tensors = {}, {}
        for f, t in parts:
            files.update(f)
            tensors.update(t)
        try:
            return commit_save(root, name, tmp, complete(meta, files, tensors))
        except OSError as e:
            raise CheckpointError(f"cannot publish checkpoint {name} under {root}: {e.strerror or e}")
    return broadcast(agree(commit))


def _save(state: TrainingState, root: str) -> str:
    ps = state.ps
    rank, world = ps.rank, ps.world_size
    name, tmp = broadcast(agree(lambda: begin_save(root, state.progress.iteration) if rank == 0 else None))
    writer = ShardWriter(tmp, shard_stem(rank))
    for key, whole in owned_tensors(state):
        writer.add(key, whole)
    writer.flush()
    rng = json.dumps(rng_state(state.stage)).encode()
    writer.write(rng_file(rank), lambda path: write_bytes(path, rng))

    def sync_files():
        if writer.error:
            raise CheckpointError(writer.error)
        try:
            fsync_dir(tmp)
        except OSError as e:
            raise CheckpointError(f"cannot sync {tmp}: {e.strerror or e}")
    agree(sync_files)
    return publish(root, name, tmp, _meta(state), writer, rank, world)
