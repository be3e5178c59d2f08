"""The checkpoint format: names of directories and files, the meta.json schema and its version.

A checkpoint is a directory ``<root>/iter_0000100/`` holding

    meta.json                iteration, consumed samples, LR schedule, model config, the plan it was
                             trained with, an index of every tensor and every file's size and sha256
    r00003-000.safetensors   full-shape, unpadded tensors under canonical names: ``model/<param>`` and
                             ``optim/<state>/<param>`` (AdamW exp_avg, exp_avg_sq, step)
    rng_r00003.json          one rank's RNG streams (restored only under the same plan)

and ``<root>/latest`` names the newest complete one, ``<root>/.lock`` the run that writes into the
root (lock.py). Every tensor is stored once, whole, so any plan and world size can load it.
meta.json carries its own sha256 (``meta_sha256``, over the canonical encoding of every other
field) and ``format_version``; reading and checking it is integrity.py and schema.py.
"""
import hashlib
import json
import os
import re
import time
from typing import Dict

import torch

from megatron_galvatron.errors import UserError

FORMAT = "megatron_galvatron.checkpoint/1"
# 2: meta.json carries format_version and meta_sha256. A meta.json with neither is version 1
# (written before 2026-12), read only under the checks of integrity.read_meta.
FORMAT_VERSION = 2
LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"
# The only files a checkpoint directory may name: no separators, no "..", nothing absolute.
SHARD_RE = re.compile(r"r\d{5,}-\d{3,}\.safetensors")
RNG_RE = re.compile(r"rng_r\d{5,}\.json")


# Fields on where the weights came from (the Hugging Face config and folder they were imported
# from, the tokenizer files): a run that loads a checkpoint writes them into every save it makes,
# so that an export after training still has them.
CARRIED = ("source", "hf_config", "tokenizer")


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


def canonical(meta: dict) -> bytes:
    """The bytes meta_sha256 is taken over: every field but meta_sha256, keys sorted, no spaces.
    Written and parsed meta.json give the same bytes (json round-trips floats exactly)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def meta_sha256(meta: dict) -> str:
    return hashlib.sha256(canonical(meta)).hexdigest()


def render(meta: dict) -> bytes:
    """The exact bytes of a meta.json holding `meta`; a reader re-renders what it parsed and
    compares, so that even an edit that keeps the meaning (1E-05 for 1e-05, spacing) is refused."""
    return (json.dumps(meta, indent=1, allow_nan=False) + "\n").encode()


def encode(meta: dict) -> bytes:
    """meta.json as written: the current format version and the checksum of the rest."""
    # Round-trip first so that what is summed is what a reader parses (tuples, non-str keys).
    body = json.loads(json.dumps(dict(meta, format=FORMAT, format_version=FORMAT_VERSION), allow_nan=False))
    body.pop("meta_sha256", None)
    body["meta_sha256"] = meta_sha256(body)
    return render(body)


def same_plan(meta: dict, plan) -> bool:
    """Whether a checkpoint was written under this plan (its predictions and compile aside:
    neither changes which rank holds which shard or RNG stream)."""
    def key(d):
        return None if d is None else {k: v for k, v in d.items() if k not in ("predicted", "compile")}
    return key(meta.get("plan")) == key(plan.to_dict()) and meta.get("world_size") == plan.world_size
