"""Tensor files of a checkpoint: safetensors written in bounded pieces, read back by key
(memory-mapped, never unpickled)."""
import os
import shutil
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

from megatron_galvatron.checkpoint.architecture import config_from_record
from megatron_galvatron.checkpoint.atomic import begin_save, commit_save, write_bytes
from megatron_galvatron.checkpoint.format import (LATEST, META, CheckpointError, complete, shard_file, shard_stem,
                                                  tensor_info)
from megatron_galvatron.checkpoint.integrity import read_meta, resolve, verify
from megatron_galvatron.checkpoint.lock import holding
from megatron_galvatron.model.config import GPTConfig

# A rank writes a file whenever this many bytes of tensors are pending, bounding host memory.
FLUSH_BYTES = 1 << 30


def all_finite(t: torch.Tensor) -> bool:
    if not t.is_floating_point():
        return True
    if t.element_size() == 1:  # float8: isfinite has no kernel for it everywhere
        t = t.float()
    return bool(torch.isfinite(t).all())


def write_tensors(path: str, tensors: Dict[str, torch.Tensor]) -> dict:
    """One safetensors file, fsynced; returns its size and sha256 for meta.json."""
    from safetensors.torch import save
    return write_bytes(path, save({k: t.contiguous() for k, t in tensors.items()}, metadata={"format": "pt"}))


class ShardWriter:
    """Buffers one rank's tensors and writes them in files of about FLUSH_BYTES. An OS error
    is kept, not raised, so the rank goes on taking part in the gathers of the other ranks."""

    def __init__(self, tmp: str, stem: str):
        self.tmp, self.stem = tmp, stem
        self.pending: Dict[str, torch.Tensor] = {}
        self.pending_bytes, self.count = 0, 0
        self.files: Dict[str, dict] = {}
        self.tensors: Dict[str, dict] = {}
        self.error: Optional[str] = None

    def add(self, key: str, t: torch.Tensor) -> None:
        if self.error:
            return
        self.pending[key] = t
        self.pending_bytes += t.numel() * t.element_size()
        if self.pending_bytes >= FLUSH_BYTES:
            self.flush()

    def write(self, fname: str, write: Callable[[str], dict]) -> None:
        if self.error:
            return
        try:
            self.files[fname] = write(os.path.join(self.tmp, fname))
        except OSError as e:
            self.error = f"cannot write {os.path.join(self.tmp, fname)}: {e.strerror or e}"

    def flush(self) -> None:
        if not self.pending or self.error:
            return
        fname = shard_file(self.stem, self.count)
        self.count += 1
        pending = self.pending
        self.write(fname, lambda path: write_tensors(path, pending))
        for k, t in pending.items():
            self.tensors[k] = tensor_info(fname, t)
        self.pending, self.pending_bytes = {}, 0


def write_checkpoint(root: str, meta: dict, items: Iterable[Tuple[str, torch.Tensor]]) -> str:
    """A checkpoint written by one process (conversion tools) from meta fields and (key, full
    tensor) pairs, consumed one at a time so that host memory stays bounded; root's lock is
    held while it writes, and a NaN or Inf stops it before anything is published."""
    with holding(root):
        name, tmp = begin_save(root, meta["iteration"])
        writer = ShardWriter(tmp, shard_stem(0))
        try:
            for key, t in items:
                if not all_finite(t):
                    raise CheckpointError(f"{key} holds NaN or Inf: refusing to write a checkpoint of non-finite "
                                          f"weights under {root}; fix the source weights")
                writer.add(key, t)
            writer.flush()
            if writer.error:
                raise CheckpointError(writer.error)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return commit_save(root, name, tmp, complete(meta, writer.files, writer.tensors))


class TensorReader:
    """Reads tensors of one checkpoint by key, opening each file once (memory-mapped)."""

    def __init__(self, d: str, meta: dict):
        self.d, self.index, self._files = d, meta["tensors"], {}

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def keys(self):
        return self.index.keys()

    def get(self, key: str, shape=None) -> torch.Tensor:
        from safetensors import safe_open
        info = self.index.get(key)
        if info is None:
            raise CheckpointError(f"checkpoint {self.d} has no tensor {key}: it holds another model")
        path = os.path.join(self.d, info["file"])
        try:
            if path not in self._files:
                self._files[path] = safe_open(path, framework="pt")
            t = self._files[path].get_tensor(key)
        except Exception as e:  # safetensors raises its own error type for a damaged file
            raise CheckpointError(f"cannot read {key} from {path} ({str(e).splitlines()[0]}): the file is "
                                  f"corrupt; load an older checkpoint")
        if not all_finite(t):
            raise CheckpointError(f"{key} in {path} holds NaN or Inf: the run that saved it had diverged or the "
                                  f"file is corrupt; load an older checkpoint")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{key} in {self.d} has shape {tuple(t.shape)} but this model needs "
                                  f"{tuple(shape)}: the model flags differ from the checkpoint's")
        return t

    def close(self) -> None:
        self._files.clear()


def open_verified(load: str) -> Tuple[str, dict, GPTConfig]:
    """(directory, metadata, model config) of the checkpoint at `load`, its files verified."""
    d = resolve(load)
    if d is None:
        raise CheckpointError(f"{load} holds no checkpoint (no {LATEST} and no {META})")
    meta = read_meta(d)
    verify(d, meta)
    return d, meta, config_from_record(meta["model"])


def read_model_tensors(path: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(meta, canonical parameter name -> full tensor) of a checkpoint, verified (tools, tests)."""
    d, meta, _ = open_verified(path)
    reader = TensorReader(d, meta)
    out = {k[len("model/"):]: reader.get(k) for k in reader.keys() if k.startswith("model/")}
    reader.close()
    return meta, out
