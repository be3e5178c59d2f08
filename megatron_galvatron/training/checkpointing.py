"""Checkpoints that do not depend on the plan that wrote them.

A checkpoint is a directory ``<root>/iter_0000100/`` holding

    meta.json                iteration, consumed samples, LR schedule, model config, the plan it was
                             trained with, an index of every tensor and every file's size and sha256
    r00003-000.safetensors   full-shape, unpadded tensors under canonical names: ``model/<param>`` and
                             ``optim/<state>/<param>`` (AdamW exp_avg, exp_avg_sq, step)
    rng_r00003.json          one rank's RNG streams (restored only under the same plan)

and ``<root>/latest`` names the newest complete one. Every tensor is stored once, whole, so any
plan and world size can load it: a rank cuts its TP shard (the parameter's ShardSpec) and then
its DP shard (the FSDP DTensor placement) out of the full tensor, for the parameter and for its
optimizer state alike. Saving spreads the work instead of collecting the model on one rank:
inside a stage each parameter is gathered (FSDP full_tensor, TP all-gather) and written by one
owner rank, owners chosen to balance bytes.

A save is atomic: files go to a hidden temporary directory and are fsynced, the directory is
renamed into place, and only then is ``latest`` replaced (write, fsync, rename). A crash at any
moment leaves the previous checkpoint and its pointer intact, and an existing checkpoint
directory is never overwritten. Tensors are read with safetensors, so loading never unpickles.
"""
import base64
import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
import zlib
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.init import canonical_name
from megatron_galvatron.tensor_parallel.mappings import all_gather_dim0
from megatron_galvatron.tensor_parallel.random import tracker_seed

FORMAT = "megatron_galvatron.checkpoint/1"
LATEST = "latest"
META = "meta.json"
TMP_PREFIX = ".tmp-"
# A rank writes a file whenever this many bytes of tensors are pending, bounding host memory.
FLUSH_BYTES = 1 << 30


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not fit this model; the message says what to do."""


# --------------------------------------------------------------------------- model config record

# Flags that fix tensor shapes: a mismatch cannot load. None: not a flag (follows the family).
_SHAPE_FLAGS = {"family": "--model-family", "num_layers": "--num-layers", "hidden_size": "--hidden-size",
                "num_attention_heads": "--num-attention-heads", "num_query_groups": "--num-query-groups",
                "ffn_hidden_size": "--ffn-hidden-size", "vocab_size": "--vocab-size", "tie_embeddings": None}
# Flags that change the function but not the shapes: a mismatch loads with a warning.
_FUNCTION_FLAGS = {"norm_eps": "--norm-epsilon", "rope_theta": "--rotary-base"}


def config_record(cfg: GPTConfig) -> dict:
    return dataclasses.asdict(cfg)


def open_verified(load: str):
    """(directory, metadata, model config) of the checkpoint at `load`, its files verified."""
    d = resolve(load)
    if d is None:
        raise UserError(f"{load} holds no checkpoint (no {LATEST} and no {META})")
    meta = read_meta(d)
    verify(d, meta)
    return d, meta, config_from_record(meta["model"])


def config_from_record(record: dict) -> GPTConfig:
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in record.items() if k in known})


def model_flags(cfg: GPTConfig) -> str:
    """The pretrain_gpt.py flags that build this architecture."""
    flags = [f"--model-family {cfg.family}", f"--num-layers {cfg.num_layers}", f"--hidden-size {cfg.hidden_size}",
             f"--num-attention-heads {cfg.num_attention_heads}", f"--ffn-hidden-size {cfg.ffn_hidden_size}",
             f"--vocab-size {cfg.vocab_size}", f"--norm-epsilon {cfg.norm_eps}"]
    if cfg.num_query_groups != cfg.num_attention_heads:
        flags.append(f"--num-query-groups {cfg.num_query_groups}")
    if cfg.family == "gpt2":
        flags.append(f"--max-position-embeddings {cfg.max_position_embeddings}")
    else:
        flags.append(f"--rotary-base {cfg.rope_theta}")
    return " ".join(flags)


def check_config(record: dict, cfg: GPTConfig, where: str) -> List[str]:
    """Raise if the checkpoint's architecture differs from cfg; return warnings for softer differences."""
    saved = config_from_record(record)
    fields = dict(_SHAPE_FLAGS)
    if cfg.family == "gpt2":
        fields["max_position_embeddings"] = "--max-position-embeddings"  # shape of the position table
    diffs = [f"{flag or name} {getattr(saved, name)} (this run: {getattr(cfg, name)})"
             for name, flag in fields.items() if getattr(saved, name) != getattr(cfg, name)]
    if diffs:
        raise CheckpointError(f"checkpoint {where} was saved with {', '.join(diffs)}: run with the checkpoint's "
                              f"model flags: {model_flags(saved)}")
    return [f"checkpoint {where} has {flag} {getattr(saved, name)} but this run uses {getattr(cfg, name)}"
            for name, flag in _FUNCTION_FLAGS.items() if getattr(saved, name) != getattr(cfg, name)]


# --------------------------------------------------------------------------- files, atomic commit

def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes(path: str, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_tensors(path: str, tensors: Dict[str, torch.Tensor]) -> dict:
    """One safetensors file, fsynced; returns its size and sha256 for meta.json."""
    from safetensors.torch import save
    return _write_bytes(path, save({k: t.contiguous() for k, t in tensors.items()}, metadata={"format": "pt"}))


def begin_save(root: str, iteration: int) -> Tuple[str, str]:
    """(final directory name, empty temporary directory) for a new checkpoint under root.
    Temporaries left by interrupted saves are removed; an existing name gets a suffix."""
    try:
        os.makedirs(root, exist_ok=True)
        for entry in os.listdir(root):
            if entry.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        name, k = f"iter_{iteration:07d}", 1
        while os.path.exists(os.path.join(root, name)):
            name, k = f"iter_{iteration:07d}.{k}", k + 1
        tmp = os.path.join(root, TMP_PREFIX + name)
        os.makedirs(tmp)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints under --save {root}: {e.strerror or e}; "
                              f"choose a writable directory")
    return name, tmp


def commit_save(root: str, name: str, tmp: str, meta: dict) -> str:
    """Write meta.json, move the finished directory into place, then point `latest` at it."""
    _write_bytes(os.path.join(tmp, META), (json.dumps(meta, indent=1) + "\n").encode())
    _fsync_dir(tmp)
    final = os.path.join(root, name)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = os.path.join(root, LATEST + ".tmp")
    _write_bytes(pointer, (name + "\n").encode())
    os.replace(pointer, os.path.join(root, LATEST))
    _fsync_dir(root)
    return final


def write_checkpoint(root: str, meta: dict, items: Iterable[Tuple[str, torch.Tensor]]) -> str:
    """A checkpoint written by one process (conversion tools) from meta fields and (key, full
    tensor) pairs, consumed one at a time so that host memory stays bounded."""
    name, tmp = begin_save(root, meta["iteration"])
    writer = _ShardWriter(tmp, "r00000")
    try:
        for key, t in items:
            writer.add(key, t)
        writer.flush()
        if writer.error:
            raise CheckpointError(writer.error)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_save(root, name, tmp, dict(meta, format=FORMAT, files=writer.files, tensors=writer.tensors))


def _tensor_info(fname: str, t: torch.Tensor) -> dict:
    return {"file": fname, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


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
    for key in ("iteration", "consumed_samples", "model", "tensors", "files"):
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
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{key} in {self.d} has shape {tuple(t.shape)} but this model needs "
                                  f"{tuple(shape)}: the model flags differ from the checkpoint's")
        return t

    def close(self) -> None:
        self._files.clear()


def read_model_tensors(path: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(meta, canonical parameter name -> full tensor) of a checkpoint, verified (tools, tests)."""
    d = resolve(path)
    if d is None:
        raise CheckpointError(f"{path} holds no checkpoint (no {LATEST} and no {META})")
    meta = read_meta(d)
    verify(d, meta)
    reader = TensorReader(d, meta)
    out = {k[len("model/"):]: reader.get(k) for k in reader.keys() if k.startswith("model/")}
    reader.close()
    return meta, out


def latest_iteration(root: str) -> Optional[int]:
    try:
        d = resolve(root)
        return None if d is None else int(read_meta(d)["iteration"])
    except (UserError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- collective helpers

def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def agree(fn: Callable, *args):
    """Run fn on every rank; if it raised a UserError on any rank, raise it on all of them, so
    that no rank is left waiting in a collective while another one exits."""
    out, err = None, None
    try:
        out = fn(*args)
    except UserError as e:
        err = str(e)
    if _world() > 1:
        errs = [None] * _world()
        dist.all_gather_object(errs, err)
        err = next((e for e in errs if e), None)
    if err:
        raise CheckpointError(err)
    return out


def _broadcast(obj, src: int = 0):
    if _world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_writable(root: str, rank: int) -> None:
    """Fail at start-up, not after hours of training, when --save cannot be written."""
    def probe():
        if rank != 0:
            return
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"--save {root}: {e.strerror or e}; choose a writable directory")
        if not os.access(root, os.W_OK | os.X_OK):
            raise CheckpointError(f"--save {root} is not writable: choose a writable directory")
    agree(probe)


# --------------------------------------------------------------------------- the stage's tensors

def _entries(tr):
    """(canonical name, parameter, ParamMeta, TP group) of this stage, in the same order on all
    of the stage's ranks (the collectives below rely on it)."""
    stage = tr.stage
    modules = [(f"layers.{i}.", m) for i, m in stage.layers.items()]
    if stage.vocab is not None:
        modules.append(("vocab.", stage.vocab))
    tp_group = {prefix + n: m.groups.tp_group for prefix, m in modules for n, _ in m.named_parameters()}
    out = []
    for name, p in stage.named_parameters():
        cname = canonical_name(name)
        out.append((cname, p, stage.param_meta[cname], tp_group[name]))
    return out


def _is_tied_copy(tr, name: str) -> bool:
    """The last stage's copy of a tied embedding (the first stage saves it)."""
    return (name == "vocab.word_embeddings.weight" and tr.cfg.tie_embeddings and tr.plan.pp_deg > 1
            and not tr.ps.is_first_stage)


def _full(t: torch.Tensor, meta, tp_group) -> torch.Tensor:
    """The full, unpadded CPU tensor of a parameter (or of optimizer state shaped like it).
    Collective over the parameter's DP group (DTensor) and TP group."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    t = t.detach()
    spec = meta.shard_spec
    if t.ndim == 0 or spec.dim is None or meta.tp_size == 1 and spec.padded_size is None:
        return t.to("cpu", copy=True)
    d = spec.dim
    gathered = all_gather_dim0(t.movedim(d, 0).contiguous(), tp_group)
    shards = [s.movedim(0, d) for s in gathered.chunk(meta.tp_size, dim=0)]
    return spec.unshard(shards, full_size=meta.full_shape[d]).to("cpu", copy=True).contiguous()


def _state_tensors(optimizer, p) -> List[Tuple[str, torch.Tensor]]:
    out = []
    for k, v in sorted(optimizer.state.get(p, {}).items()):
        if isinstance(v, (int, float)):
            v = torch.tensor(float(v), dtype=torch.float64)
        if torch.is_tensor(v):
            out.append((k, v))
    return out


def _owners(entries, n: int) -> List[int]:
    """Stage-local writer of each entry: largest first onto the least-loaded rank."""
    load, owner = [0] * n, [0] * len(entries)
    sizes = [int(np.prod(e[2].full_shape)) for e in entries]
    for j in sorted(range(len(entries)), key=lambda j: (-sizes[j], j)):
        r = min(range(n), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += sizes[j]
    return owner


class _ShardWriter:
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
        fname = f"{self.stem}-{self.count:03d}.safetensors"
        self.count += 1
        pending = self.pending
        self.write(fname, lambda path: write_tensors(path, pending))
        for k, t in pending.items():
            self.tensors[k] = _tensor_info(fname, t)
        self.pending, self.pending_bytes = {}, 0


# --------------------------------------------------------------------------- RNG

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _trackers(tr):
    """(name, module) of every module that owns a per-TP-rank dropout stream."""
    stage = tr.stage
    out = [(f"layers.{i}", m) for i, m in stage.layers.items()]
    if stage.vocab is not None:
        out.append(("vocab", stage.vocab))
    return out


def rng_state(tr) -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    st = {"torch": _b64(torch.get_rng_state()), "python": [py[0], list(py[1]), py[2]],
          "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
          "trackers": {name: _b64(m.tracker.generator.get_state()) for name, m in _trackers(tr)}}
    if tr.device.type == "cuda":
        st["cuda"] = _b64(torch.cuda.get_rng_state(tr.device))
    return st


def _set_rng_state(tr, st: dict) -> None:
    torch.set_rng_state(_unb64(st["torch"]))
    if tr.device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(_unb64(st["cuda"]), tr.device)
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    n = st["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    for name, m in _trackers(tr):
        if name not in st["trackers"]:
            raise CheckpointError(f"RNG state of {name} is missing from the checkpoint: it is corrupt")
        m.tracker.generator.set_state(_unb64(st["trackers"][name]))


def _reseed(tr, seed: int, iteration: int) -> None:
    """Another plan draws other masks anyway; continue with streams fixed by (seed, iteration)."""
    s = (seed * 1_000_003 + iteration) % 2 ** 63
    torch.manual_seed(s + 100 * tr.ps.pp_rank)  # stages keep distinct default streams, as at start-up
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    for name, m in _trackers(tr):  # one stream per module and TP rank, as at initialisation
        m.tracker.generator.manual_seed(tracker_seed(s, m.groups.tp_rank, zlib.crc32(name.encode())))


def same_plan(meta: dict, plan) -> bool:
    """Whether a checkpoint was written under this plan (its predictions aside)."""
    def key(d):
        return None if d is None else {k: v for k, v in d.items() if k != "predicted"}
    return key(meta.get("plan")) == key(plan.to_dict()) and meta.get("world_size") == plan.world_size


# --------------------------------------------------------------------------- save / load a Trainer

def save_checkpoint(tr, root: str) -> str:
    """Save tr (model, optimizer, iteration, data position, RNG, plan) under root; every rank calls it."""
    ps = tr.ps
    rank, world = ps.rank, ps.world_size
    name, tmp = _broadcast(agree(lambda: begin_save(root, tr.iteration) if rank == 0 else None))
    entries = [e for e in _entries(tr) if not _is_tied_copy(tr, e[0])]
    owners = _owners(entries, tr.plan.stage_world)
    writer = _ShardWriter(tmp, f"r{rank:05d}")
    for (cname, p, meta, group), owner in zip(entries, owners):
        mine = owner == ps.local_idx
        states = [(f"optim/{k}/{cname}", v) for k, v in _state_tensors(tr.optimizer, p)]
        for key, t in [("model/" + cname, p)] + states:
            full = _full(t, meta, group)
            if mine:
                writer.add(key, full)
    writer.flush()
    rng_file = f"rng_r{rank:05d}.json"
    state = json.dumps(rng_state(tr)).encode()
    writer.write(rng_file, lambda path: _write_bytes(path, state))

    def sync_files():
        if writer.error:
            raise CheckpointError(writer.error)
        try:
            _fsync_dir(tmp)
        except OSError as e:
            raise CheckpointError(f"cannot sync {tmp}: {e.strerror or e}")
    agree(sync_files)
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
            return commit_save(root, name, tmp, _meta(tr, files, tensors))
        except OSError as e:
            raise CheckpointError(f"cannot publish checkpoint {name} under {root}: {e.strerror or e}")
    return _broadcast(agree(commit))


def _meta(tr, files: dict, tensors: dict) -> dict:
    args, sched = tr.args, tr.lr_schedule
    return {
        "format": FORMAT,
        "iteration": tr.iteration,
        "consumed_samples": tr.consumed_samples,
        "model": config_record(tr.cfg),
        "plan": tr.plan.to_dict(),
        "world_size": tr.ps.world_size,
        "lr_schedule": {"lr": sched.lr, "min_lr": sched.min_lr, "warmup": sched.warmup,
                        "decay_iters": sched.decay_iters, "style": sched.style, "next_lr": sched(tr.iteration)},
        "optimizer": {"type": "AdamW", "has_state": any(k.startswith("optim/") for k in tensors),
                      "betas": [getattr(args, "adam_beta1", None), getattr(args, "adam_beta2", None)],
                      "eps": getattr(args, "adam_eps", None), "weight_decay": getattr(args, "weight_decay", None)},
        "seed": getattr(args, "seed", None),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tensors": tensors,
        "files": files,
    }


def _check(path: str, tr, missing_ok: bool):
    d = resolve(path)
    if d is None:
        if missing_ok:
            return None, None, []
        raise CheckpointError(f"--load {path}: no checkpoint there (no {LATEST} file and no {META}); "
                              f"point --load at a --save directory or an iter_* directory in it")
    meta = read_meta(d)
    warnings = check_config(meta["model"], tr.cfg, d)
    verify(d, meta, tr.ps.rank, tr.ps.world_size)
    return d, meta, warnings


def _local_piece(full: torch.Tensor, meta, p: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a full tensor: its TP shard, then its DP shard when p is a DTensor."""
    shard = meta.shard_spec.shard(full, meta.tp_rank, meta.tp_size).to(p.device, p.dtype)
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(shard, p.device_mesh, p.placements, src_data_rank=None)
    return shard.clone()


def _step_tensor(value: torch.Tensor, group: dict, p: torch.Tensor) -> torch.Tensor:
    # As torch.optim.AdamW creates it: on the device for fused/capturable, else a CPU scalar.
    on_device = group.get("fused") or group.get("capturable")
    return value.to(torch.float32).reshape(()).to(p.device if on_device else "cpu").clone()


def _read_local(tr, reader: TensorReader, has_optim: bool):
    groups = {id(q): g for g in tr.optimizer.param_groups for q in g["params"]}
    state_keys: Dict[str, List[str]] = {}
    for key in reader.keys():
        if key.startswith("optim/"):
            _, k, cname = key.split("/", 2)
            state_keys.setdefault(cname, []).append(k)
    out = []
    for cname, p, meta, _ in _entries(tr):
        value = _local_piece(reader.get("model/" + cname, meta.full_shape), meta, p)
        state = None
        if has_optim and id(p) in groups:
            state = {}
            for k in sorted(state_keys.get(cname, [])):
                t = reader.get(f"optim/{k}/{cname}")
                if t.ndim == 0:
                    state[k] = _step_tensor(t, groups[id(p)], p)
                else:
                    if tuple(t.shape) != tuple(meta.full_shape):
                        raise CheckpointError(f"optim/{k}/{cname} in {reader.d} has shape {tuple(t.shape)}, "
                                              f"expected {tuple(meta.full_shape)}: the checkpoint is corrupt")
                    state[k] = _local_piece(t.to(torch.float32), meta, p)
        out.append((p, value, state))
    return out


def load_checkpoint(tr, path: str, missing_ok: bool = False, finetune: bool = False, load_optim: bool = True,
                    load_rng: bool = True) -> Optional[str]:
    """Load a checkpoint saved under any plan into tr; every rank calls it. Returns the directory
    loaded, or None when missing_ok and `path` holds no checkpoint yet. finetune: the weights
    only, starting a new run at iteration 0 with a fresh optimizer and the run's own RNG
    streams; load_optim / load_rng: leave out just the optimizer state / the RNG streams."""
    d, meta, warnings = agree(_check, path, tr, missing_ok)
    if d is None:
        return None
    if tr.ps.rank == 0:
        for w in warnings:
            print(f"warning: {w}", flush=True)
    reader = TensorReader(d, meta)
    has_optim = bool(meta.get("optimizer", {}).get("has_state")) and load_optim and not finetune
    updates = agree(_read_local, tr, reader, has_optim)
    reader.close()
    with torch.no_grad():
        for p, value, state in updates:
            dst = p.to_local() if hasattr(p, "to_local") else p
            dst.copy_(value.to_local() if hasattr(value, "to_local") else value)
            if state:
                tr.optimizer.state[p] = state
            else:
                tr.optimizer.state.pop(p, None)
    if finetune:
        return d
    tr.iteration = int(meta["iteration"])
    tr.consumed_samples = int(meta["consumed_samples"])
    if load_rng:
        agree(_restore_rng, tr, d, meta)
    return d


def _restore_rng(tr, d: str, meta: dict) -> None:
    fname = f"rng_r{tr.ps.rank:05d}.json"
    if not any(f.startswith("rng_") for f in meta["files"]):
        return  # converted checkpoint: keep the fresh run's streams
    if same_plan(meta, tr.plan) and fname in meta["files"]:
        try:
            with open(os.path.join(d, fname)) as f:
                _set_rng_state(tr, json.load(f))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise CheckpointError(f"{os.path.join(d, fname)} is corrupt ({type(e).__name__}): load an older "
                                  f"checkpoint")
    else:
        _reseed(tr, int(getattr(tr.args, "seed", 0) or 0), tr.iteration)
