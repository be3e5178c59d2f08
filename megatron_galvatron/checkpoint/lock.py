"""One writer per save root: ``<root>/.lock``, held with flock by the process that writes there
(rank 0 of a training run for the life of the run; a converter for the length of its write).
The kernel drops an flock when its holder dies, even by SIGKILL, so a lock left by a dead run
is simply taken over; the host, pid and start time inside are only there to name the holder."""
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from typing import Optional

from megatron_galvatron.checkpoint.format import CheckpointError

LOCK = ".lock"


class RootLock:
    """An open, flocked <root>/.lock; closing the file releases it."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.release()


def _holder(path: str) -> dict:
    try:
        with open(path) as f:
            info = json.loads(f.read(4096) or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _is_this_process(info: dict) -> bool:
    return info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()


def acquire(root: str) -> Optional[RootLock]:
    """Take root's lock. None when this process holds it already (a trainer's lock, and the save
    it then calls); CheckpointError naming the holder when another live process does."""
    path = os.path.join(root, LOCK)
    try:
        os.makedirs(root, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never unlinked: a waiter could lock a stale inode
    except OSError as e:
        raise CheckpointError(f"cannot create {path}: {e.strerror or e}; choose a writable --save directory")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = _holder(path)
        if _is_this_process(info):
            return None
        who = (f"host {info.get('host')}, pid {info.get('pid')}, since {info.get('started')}" if info
               else "a process that has not yet written its name")
        raise CheckpointError(f"--save {root} is in use by another run ({who}; lock {path}): wait for it to end "
                              f"or choose another --save directory")
    except OSError as e:
        os.close(fd)
        raise CheckpointError(f"cannot lock {path}: {e.strerror or e}; choose a --save directory on a "
                              f"filesystem with flock")
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)
    return RootLock(fd, path)


@contextmanager
def holding(root: str):
    """root's lock for the length of the block (kept if this process held it before)."""
    lock = acquire(root)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
