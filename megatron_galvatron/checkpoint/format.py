"""The checkpoint format: names of directories and files, the meta.json schema and its version.

A checkpoint is a directory ``<root>/iter_0000100/`` holding

    meta.json                iteration, consumed samples, LR schedule, model config, the plan it was
                             trained with, an index of every tensor and every file's size and sha256
    r00003-000.safetensors   full-shape, unpadded tensors under canonical names: ``model/<param>`` and
                             ``optim/<state>/<param>`` (AdamW exp_avg, exp_avg_sq, step)
    rng_r00003.json          one rank's RNG streams (restored only under the same plan)

and ``<root>/latest`` names the newest complete one. Every tensor is stored once, whole, so any
plan and world size can load it.
"""
import hashlib
import json
import os
import time
from typing import Dict, Optional

import torch

from megatron_galvatron.errors import UserError

FORMAT = "megatron_galvatron.checkpoint/1"
LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"
REQUIRED = ("iteration", "consumed_samples", "model", "tensors", "files")


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not fit this model; the message says what to do."""


def checkpoint_name(iteration: int, k: int = 0) -> str:
    """The directory of a checkpoint at `iteration`; k > 0 for the k-th further one at the same iteration."""
    return f"iter_{iteration:07d}" + (f".{k}" if k else "")


def shard_stem(rank: int) -> str:
    return f"r{rank:05d}"


def shard_file(stem: str, count: int) -> str:
    return f"{stem}-{count:03d}.safetensors"


def rng_file(rank: int) -> str:
    return f"rng_r{rank:05d}.json"


def is_rng_file(fname: str) -> bool:
    return fname.startswith("rng_")


def tensor_info(fname: str, t: torch.Tensor) -> dict:
    return {"file": fname, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


# --------------------------------------------------------------------------- building meta.json

def training_meta(iteration: int, consumed_samples: int, model: dict, plan: dict, world_size: int,
                  lr_schedule: dict, optimizer: dict, seed: int) -> dict:
    """meta.json of a training run, before its files and tensors are known."""
    return {"format": FORMAT, "iteration": iteration, "consumed_samples": consumed_samples, "model": model,
            "plan": plan, "world_size": world_size, "lr_schedule": lr_schedule, "optimizer": optimizer,
            "seed": seed, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def converted_meta(model: dict, **source) -> dict:
    """meta.json of weights brought from elsewhere: iteration 0, no plan, no optimizer state."""
    return {"iteration": 0, "consumed_samples": 0, "model": model, "plan": None, "world_size": None,
            "optimizer": {"has_state": False}, **source}


def resharded_meta(meta: dict, plan: dict, world_size: int, files: dict, source_dir: str) -> dict:
    """meta.json of a copy of a checkpoint that records another plan."""
    return dict(meta, plan=plan, world_size=world_size, files=files,
                resharded_from={"dir": os.path.abspath(source_dir), "plan": meta.get("plan")})


def complete(meta: dict, files: Dict[str, dict], tensors: Dict[str, dict]) -> dict:
    """meta.json once every file is written: the index of files and tensors, and whether the
    tensors include optimizer state (a load restores that state only then)."""
    has_state = any(k.startswith("optim/") for k in tensors)
    return dict(meta, format=FORMAT, optimizer=dict(meta["optimizer"], has_state=has_state), tensors=tensors,
                files=files)


def encode(meta: dict) -> bytes:
    return (json.dumps(meta, indent=1) + "\n").encode()


# --------------------------------------------------------------------------- reading meta.json

def resolve(path: str) -> Optional[str]:
    """The checkpoint directory `path` names (itself, or what its `latest` points to); None if
    `path` holds no checkpoint at all."""
    if os.path.isfile(os.path.join(path, META)):
        return path
    pointer = os.path.join(path, LATEST)
    if not os.path.exists(pointer):
        return None
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {pointer} ({e}): point --load at an iter_* directory instead")
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise CheckpointError(f"{pointer} is corrupt (holds {name[:40]!r}): write the name of a complete "
                              f"iter_* directory into it or point --load at one")
    d = os.path.join(path, name)
    if not os.path.isfile(os.path.join(d, META)):
        raise CheckpointError(f"{pointer} names {name}, which has no {META} (incomplete or deleted): "
                              f"point --load at a complete iter_* directory")
    return d


def read_meta(d: str) -> dict:
    path = os.path.join(d, META)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable or corrupt ({type(e).__name__}): load an older checkpoint")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    for key in REQUIRED:
        if key not in meta:
            raise CheckpointError(f"{path} lacks {key!r}: the checkpoint is corrupt; load an older one")
    for fname in meta["files"]:
        if os.path.basename(fname) != fname:
            raise CheckpointError(f"{path} lists a file outside the checkpoint ({fname!r}): it is corrupt")
    return meta


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def verify(d: str, meta: dict, rank: int = 0, world: int = 1) -> None:
    """Every file's presence and size; the checksums of every world-th file from `rank` on."""
    for i, (fname, info) in enumerate(sorted(meta["files"].items())):
        path = os.path.join(d, fname)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; load an older one")
        if size != info["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes but was saved with {info['bytes']}: the file is "
                                  f"truncated or corrupt; load an older checkpoint")
        if i % world == rank and _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{path} does not match its saved sha256: the file is corrupt; "
                                  f"load an older checkpoint")


def latest_iteration(root: str) -> Optional[int]:
    try:
        d = resolve(root)
        return None if d is None else int(read_meta(d)["iteration"])
    except (UserError, ValueError, TypeError):
        return None


def same_plan(meta: dict, plan) -> bool:
    """Whether a checkpoint was written under this plan (its predictions and compile aside:
    neither changes which rank holds which shard or RNG stream)."""
    def key(d):
        return None if d is None else {k: v for k, v in d.items() if k not in ("predicted", "compile")}
    return key(meta.get("plan")) == key(plan.to_dict()) and meta.get("world_size") == plan.world_size
