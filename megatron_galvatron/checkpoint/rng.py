"""A rank's RNG streams in a checkpoint: torch (and CUDA), Python, numpy, and each module's
per-TP-rank dropout stream. Restored as saved under the same plan; another plan draws other
masks anyway, so there the streams are re-seeded from (seed, iteration)."""
import base64
import json
import os
import random
import zlib

import numpy as np
import torch

from megatron_galvatron.checkpoint.format import CheckpointError, is_rng_file, rng_file, same_plan
from megatron_galvatron.checkpoint.state import TrainingState
from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.tensor_parallel.random import tracker_seed


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def _trackers(stage: StageModel):
    """(name, module) of every module that owns a per-TP-rank dropout stream."""
    return [(u.name, u.module) for u in stage.units()]


def rng_state(stage: StageModel) -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    st = {"torch": _b64(torch.get_rng_state()), "python": [py[0], list(py[1]), py[2]],
          "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
          "trackers": {name: _b64(m.tracker.generator.get_state()) for name, m in _trackers(stage)}}
    device = stage.ps.device
    if device.type == "cuda":
        st["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return st


def _set_rng_state(stage: StageModel, st: dict) -> None:
    device = stage.ps.device
    torch.set_rng_state(_unb64(st["torch"]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(_unb64(st["cuda"]), device)
    random.setstate((st["python"][0], tuple(st["python"][1]), st["python"][2]))
    n = st["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    for name, m in _trackers(stage):
        if name not in st["trackers"]:
            raise CheckpointError(f"RNG state of {name} is missing from the checkpoint: it is corrupt")
        m.tracker.generator.set_state(_unb64(st["trackers"][name]))


def _reseed(stage: StageModel, seed: int, iteration: int) -> None:
    s = (seed * 1_000_003 + iteration) % 2 ** 63
    torch.manual_seed(s + 100 * stage.ps.pp_rank)  # stages keep distinct default streams, as at start-up
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    for name, m in _trackers(stage):  # one stream per module and TP rank, as at initialisation
        m.tracker.generator.manual_seed(tracker_seed(s, m.groups.rng_rank, zlib.crc32(name.encode())))


def restore(state: TrainingState, d: str, meta: dict) -> None:
    fname = rng_file(state.ps.rank)
    if not any(is_rng_file(f) for f in meta["files"]):
        return  # converted checkpoint: keep the fresh run's streams
    if same_plan(meta, state.plan) and fname in meta["files"]:
        try:
            with open(os.path.join(d, fname)) as f:
                _set_rng_state(state.stage, json.load(f))
        # Its sha256 matched, but a hand-made checkpoint can sign anything: refuse, never crash.
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError,
                RecursionError) as e:
            raise CheckpointError(f"{os.path.join(d, fname)} is corrupt ({type(e).__name__}): load an older "
                                  f"checkpoint")
    else:
        _reseed(state.stage, state.seed, int(meta["iteration"]))
