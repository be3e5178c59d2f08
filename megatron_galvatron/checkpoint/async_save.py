"""--async-save: the checkpoint of save.py, with its files written while training goes on.

A save has three parts. The gathers (FSDP full_tensor, TP all-gather) are collective and leave
full CPU copies of this rank's share, so they run on the main thread, and training waits for
them: after them nothing reads the live parameters. Writing and fsyncing the files is local
and runs in a background thread. Publishing (every rank's files are synced, then rank 0 renames
the directory into place and moves `latest`) is collective again, so it runs on the main thread
too, once all ranks' threads are done: a collective issued from the thread would interleave
with the training step's collectives on the same group, in a different order on each rank.

The host holds this rank's share of the checkpoint until its thread has written it (the
synchronous save writes about every GiB instead).
"""
import json
import threading
import time
import torch.distributed as dist

from megatron_galvatron.checkpoint.atomic import begin_save, commit_save, fsync_dir, write_bytes
from megatron_galvatron.checkpoint.collective import agree, broadcast
from megatron_galvatron.checkpoint.format import CheckpointError, complete, rng_file, shard_stem
from megatron_galvatron.checkpoint.rng import rng_state
from megatron_galvatron.checkpoint.lock import acquire
from megatron_galvatron.checkpoint.save import _check_finite, _meta, _owners, _state_tensors
from megatron_galvatron.checkpoint.shards import entries, is_tied_copy
from megatron_galvatron.checkpoint.state import TrainingState
from megatron_galvatron.checkpoint.tensors import ShardWriter
from megatron_galvatron.model.canonical import full_tensor


class PendingSave:
    """One checkpoint whose files a background thread is writing; `commit` publishes it."""

    def __init__(self, root: str, name: str, tmp: str, meta: dict, writer: ShardWriter, items, rng: bytes,
                 rank: int, world: int, iteration: int, lock=None):
        self.root, self.name, self.tmp, self.meta, self.writer = root, name, tmp, meta, writer
        self.lock = lock  # the root's lock when this save took it (no trainer holding it), until commit
        self.rank, self.world, self.iteration = rank, world, iteration
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._write, args=(items, rng), name=f"save-{name}", daemon=True)
        self.thread.start()

    def _write(self, items, rng: bytes) -> None:
        w = self.writer
        try:
            for key, t in items:
                w.add(key, t)
            w.flush()
            w.write(rng_file(self.rank), lambda path: write_bytes(path, rng))
            if not w.error:
                fsync_dir(self.tmp)
        except Exception as e:  # kept for the main thread, which reports it on every rank
            w.error = w.error or f"cannot write checkpoint {self.tmp}: {type(e).__name__}: {e}"

    def written(self) -> bool:
        """Whether this rank's files are on disk (or failed); does not wait."""
        return not self.thread.is_alive()

    def commit(self) -> str:
        """Wait for this rank's thread and publish the checkpoint; every rank calls it at the same
        point. A failed write on any rank raises CheckpointError on all of them."""
        try:
            return self._commit()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _commit(self) -> str:
        self.thread.join()
        writer = self.writer

        def check():
            if writer.error:
                raise CheckpointError(writer.error)
        agree(check)
        parts = [(writer.files, writer.tensors)] * self.world
        if self.world > 1:
            dist.all_gather_object(parts, (writer.files, writer.tensors))

        def publish():
            if self.rank != 0:
                return None
            files, tensors = {}, {}
            for f, t in parts:
                files.update(f)
                tensors.update(t)
            try:
                return commit_save(self.root, self.name, self.tmp, complete(self.meta, files, tensors))
            except OSError as e:
                raise CheckpointError(f"cannot publish checkpoint {self.name} under {self.root}: {e.strerror or e}")
        return broadcast(agree(publish))


def start_save(state: TrainingState, root: str) -> PendingSave:
    """Gather this rank's share of the checkpoint into host memory (collective, every rank) and
    start writing it in the background. The same files and tensors as save.save."""
    ps = state.ps
    rank = ps.rank
    agree(_check_finite, state, root)  # as save.save: no checkpoint of a diverged run
    lock = agree(lambda: acquire(root) if rank == 0 else None)  # None: the trainer holds it
    name, tmp = broadcast(agree(lambda: begin_save(root, state.progress.iteration) if rank == 0 else None))
    stage_entries = [e for e in entries(state.stage) if not is_tied_copy(state.stage, e[0])]
    owners = _owners(stage_entries, state.plan.stage_world)
    items = []
    for (cname, p, meta, group), owner in zip(stage_entries, owners):
        states = [(f"optim/{k}/{cname}", v) for k, v in _state_tensors(state.optimizer, p)]
        for key, t in [("model/" + cname, p)] + states:
            whole = full_tensor(t, meta, group)  # a CPU copy: the next step may change t
            if owner == ps.local_idx:
                items.append((key, whole))
    rng = json.dumps(rng_state(state.stage)).encode()
    return PendingSave(root, name, tmp, _meta(state), ShardWriter(tmp, shard_stem(rank)), items, rng, rank,
                       ps.world_size, state.progress.iteration, lock)

