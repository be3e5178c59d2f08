"""Loading a checkpoint saved under any plan into a run; every rank calls it and cuts its own
pieces out of the full tensors."""
from typing import Dict, List, Optional, Tuple

import torch

from megatron_galvatron.checkpoint import rng
from megatron_galvatron.checkpoint.architecture import check_config
from megatron_galvatron.checkpoint.collective import agree
from megatron_galvatron.checkpoint.format import CARRIED, LATEST, META, CheckpointError
from megatron_galvatron.checkpoint.integrity import is_unsummed, read_meta, resolve, verify
from megatron_galvatron.checkpoint.shards import entries, local_piece
from megatron_galvatron.checkpoint.state import Loaded, Progress, TrainingState
from megatron_galvatron.checkpoint.tensors import TensorReader


def inspect(path: str, cfg, missing_ok: bool = False) -> Optional[Tuple[str, dict, List[str]]]:
    """The checkpoint directory `path` names, its meta.json and the warnings for this run's model
    config `cfg`, read without the model, so a bad --load stops a run before it builds one; the
    shards are verified by load. None when missing_ok and `path` holds no checkpoint yet."""
    d = resolve(path)
    if d is None:
        if missing_ok:
            return None
        raise CheckpointError(f"--load {path}: no checkpoint there (no {LATEST} file and no {META}); "
                              f"point --load at a --save directory or an iter_* directory in it")
    meta = read_meta(d)
    warnings = check_config(meta["model"], cfg, d)
    if is_unsummed(meta):
        warnings.append(f"{d}/{META} predates format_version 2 and has no meta_sha256: its files are verified, "
                        f"its own bytes cannot be; the next save writes the current format")
    return d, meta, warnings


def _check(path: str, state: TrainingState, missing_ok: bool):
    found = inspect(path, state.stage.cfg, missing_ok)
    if found is None:
        return None, None, []
    d, meta, warnings = found
    verify(d, meta, state.ps.rank, state.ps.world_size)
    return d, meta, warnings


def _step_tensor(value: torch.Tensor, group: dict, p: torch.Tensor) -> torch.Tensor:
    # As torch.optim.AdamW creates it: on the device for fused/capturable, else a CPU scalar.
    on_device = group.get("fused") or group.get("capturable")
    return value.to(torch.float32).reshape(()).to(p.device if on_device else "cpu").clone()


def _read_local(state: TrainingState, reader: TensorReader, has_optim: bool):
    groups = {id(q): g for g in state.optimizer.param_groups for q in g["params"]}
    state_keys: Dict[str, List[str]] = {}
    for key in reader.keys():
        if key.startswith("optim/"):
            _, k, cname = key.split("/", 2)
            state_keys.setdefault(cname, []).append(k)
    out = []
    for cname, p, meta, _ in entries(state.stage):
        value = local_piece(reader.get("model/" + cname, meta.full_shape), meta, p)
        optim_state = None
        if has_optim and id(p) in groups:
            optim_state = {}
            for k in sorted(state_keys.get(cname, [])):
                t = reader.get(f"optim/{k}/{cname}")
                if t.ndim == 0:
                    optim_state[k] = _step_tensor(t, groups[id(p)], p)
                else:
                    if tuple(t.shape) != tuple(meta.full_shape):
                        raise CheckpointError(f"optim/{k}/{cname} in {reader.d} has shape {tuple(t.shape)}, "
                                              f"expected {tuple(meta.full_shape)}: the checkpoint is corrupt")
                    optim_state[k] = local_piece(t.to(torch.float32), meta, p)
        out.append((p, value, optim_state))
    return out


def load(state: TrainingState, path: str, missing_ok: bool = False, finetune: bool = False, load_optim: bool = True,
         load_rng: bool = True) -> Optional[Loaded]:
    """Load the checkpoint at `path` into state's stage, optimizer and RNG streams. None when
    missing_ok and `path` holds no checkpoint yet. finetune: the weights only, for a new run
    at iteration 0 with a fresh optimizer and its own RNG streams; load_optim / load_rng: leave
    out just the optimizer state / the RNG streams."""
    d, meta, warnings = agree(_check, path, state, missing_ok)
    if d is None:
        return None
    if state.ps.rank == 0:
        for w in warnings:
            print(f"warning: {w}", flush=True)
    reader = TensorReader(d, meta)
    has_optim = bool(meta.get("optimizer", {}).get("has_state")) and load_optim and not finetune
    updates = agree(_read_local, state, reader, has_optim)
    reader.close()
    with torch.no_grad():
        for p, value, optim_state in updates:
            dst = p.to_local() if hasattr(p, "to_local") else p
            dst.copy_(value.to_local() if hasattr(value, "to_local") else value)
            if optim_state:
                state.optimizer.state[p] = optim_state
            else:
                state.optimizer.state.pop(p, None)
    carried = {k: meta[k] for k in CARRIED if k in meta}
    if finetune:
        return Loaded(d, state.progress, carried)
    if load_rng:
        agree(rng.restore, state, d, meta)
    return Loaded(d, Progress(int(meta["iteration"]), int(meta["consumed_samples"])), carried)
