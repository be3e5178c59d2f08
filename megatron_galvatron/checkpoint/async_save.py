"""--async-save: the checkpoint of save.py, with its files written while training goes on.

A save has three parts. The gathers (FSDP full_tensor, TP all-gather) are collective and leave
full CPU copies of this rank's share, so they run on the main thread, and training waits for
them: after them nothing reads the live parameters. Writing and fsyncing the files is local
and runs in a background thread. Publishing (every rank's files are synced, then rank 0 renames
the directory into place and moves `latest`) is collective again, so it runs on the main thread
too, once all ranks' threads are done: a collective issued from the thread would interleave
with the training step's collectives on the same group, in a different order on each rank.

The host holds this rank's share of the checkpoint (in host_staging.py's buffers, which stay
allocated for the next save) while its thread writes it; the synchronous save writes about
every GiB instead. On a GPU training does not even wait for the copies to the host: they are
queued on the stream, and the thread waits for them.
"""
import json
import threading
import time
from typing import Optional

from megatron_galvatron.checkpoint.atomic import begin_save, fsync_dir, write_bytes
from megatron_galvatron.checkpoint.collective import agree, broadcast
from megatron_galvatron.checkpoint.host_staging import HostStaging
from megatron_galvatron.checkpoint.format import CheckpointError, rng_file, shard_stem
from megatron_galvatron.checkpoint.rng import rng_state
from megatron_galvatron.checkpoint.lock import acquire
from megatron_galvatron.checkpoint.save import _check_finite, _meta, owned_tensors, publish
from megatron_galvatron.checkpoint.state import TrainingState
from megatron_galvatron.checkpoint.tensors import ShardWriter


class PendingSave:
    """One checkpoint whose files a background thread is writing; `commit` publishes it."""

    def __init__(self, root: str, name: str, tmp: str, meta: dict, writer: ShardWriter, items, rng: bytes,
                 rank: int, world: int, iteration: int, lock=None, staging: Optional[HostStaging] = None):
        self.root, self.name, self.tmp, self.meta, self.writer = root, name, tmp, meta, writer
        self.lock = lock  # the root's lock when this save took it (no trainer holding it), until commit
        self.rank, self.world, self.iteration = rank, world, iteration
        self.staging = staging
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._write, args=(items, rng), name=f"save-{name}", daemon=True)
        self.thread.start()

    def _write(self, items, rng: bytes) -> None:
        w = self.writer
        try:
            if self.staging is not None:
                self.staging.wait()  # the copies queued on the GPU stream have landed
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
        return publish(self.root, self.name, self.tmp, self.meta, writer, self.rank, self.world)


def start_save(state: TrainingState, root: str, staging: Optional[HostStaging] = None) -> PendingSave:
    """Gather this rank's share of the checkpoint into host memory (collective, every rank; into
    staging's buffers, reused across saves, when given) and start writing it in the background.
    The same files and tensors as save.save."""
    ps = state.ps
    rank = ps.rank
    agree(_check_finite, state, root)  # as save.save: no checkpoint of a diverged run
    lock = agree(lambda: acquire(root) if rank == 0 else None)  # None: the trainer holds it
    try:
        name, tmp = broadcast(agree(lambda: begin_save(root, state.progress.iteration) if rank == 0 else None))
        items = list(owned_tensors(state, staging))  # host copies: training may go on once they are queued
        if staging is not None:
            staging.queued()
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    rng = json.dumps(rng_state(state.stage)).encode()
    return PendingSave(root, name, tmp, _meta(state), ShardWriter(tmp, shard_stem(rank)), items, rng, rank,
                       ps.world_size, state.progress.iteration, lock, staging)

