"""Atomic publication of a checkpoint: files go to a hidden temporary directory and are fsynced,
the directory is renamed into place, and only then is ``latest`` replaced (write, fsync, rename).
A crash at any moment leaves the previous checkpoint and its pointer intact, and an existing
checkpoint directory is never overwritten."""
import hashlib
import os
import shutil
from typing import Tuple

from megatron_galvatron.checkpoint.format import LATEST, META, TMP_PREFIX, CheckpointError, checkpoint_name, encode
from megatron_galvatron.checkpoint.schema import check_meta


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str, data: bytes) -> dict:
    """Write and fsync one file; returns its size and sha256 for meta.json."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def begin_save(root: str, iteration: int) -> Tuple[str, str]:
    """(final directory name, empty temporary directory) for a new checkpoint under root; an
    existing name gets a suffix. The caller holds root's lock (lock.py), and every writer does
    while it writes, so any temporary directory found here was left by a save that died
    (SIGKILL, power loss) and is removed."""
    try:
        os.makedirs(root, exist_ok=True)
        for entry in os.listdir(root):
            if entry.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        name, k = checkpoint_name(iteration), 1
        while os.path.exists(os.path.join(root, name)):
            name, k = checkpoint_name(iteration, k), k + 1
        tmp = os.path.join(root, TMP_PREFIX + name)
        os.makedirs(tmp)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints under --save {root}: {e.strerror or e}; "
                              f"choose a writable directory")
    return name, tmp


def commit_save(root: str, name: str, tmp: str, meta: dict) -> str:
    """Write meta.json, move the finished directory into place, then point `latest` at it.
    The schema check that readers run is run here too, so that nothing written is refused."""
    check_meta(meta, os.path.join(tmp, META))
    write_bytes(os.path.join(tmp, META), encode(meta))
    fsync_dir(tmp)
    final = os.path.join(root, name)
    os.rename(tmp, final)
    fsync_dir(root)
    pointer = os.path.join(root, LATEST + ".tmp")
    write_bytes(pointer, (name + "\n").encode())
    os.replace(pointer, os.path.join(root, LATEST))
    fsync_dir(root)
    return final
