"""pretrain_gpt.py with --save / --save-interval / --load / --eval-interval / --skip-train, run as
real processes: periodic and final saves, a resumed run equal to an uninterrupted one, the
validation loss of a loaded checkpoint equal to the reference model's, and every damaged
checkpoint refused with one line on stderr (exit 2) while nothing on disk changes."""
import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_galvatron import checkpoint
from megatron_galvatron.data.mock_dataset import MockGPTDataset
from tests.megatron_log import lm_losses
from tests.reference_model import reference_loss
from tests.pretrain_in_process import pretrain_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--mock-data", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
         "--vocab-size", "61", "--global-batch-size", "4", "--lr-decay-style", "constant", "--seed", "5"]


def _start(*argv):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *MODEL, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs):
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr)
    return out


def _losses(stdout):
    return [loss for _, loss in sorted(lm_losses(stdout).items())]


def _snapshot(d):
    """sha256 of every file under d but the save root's lock, which records the last run to hold it."""
    out = {}
    for dirpath, _, files in os.walk(d):
        for f in files:
            if f == ".lock" and dirpath == d:
                continue
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _damage(d, case):
    it = os.path.join(d, "iter_0000004")
    shard = os.path.join(it, "r00000-000.safetensors")
    if case == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    elif case == "bit_flip":
        with open(shard, "r+b") as f:
            f.seek(os.path.getsize(shard) - 100)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x40]))
    elif case == "meta":
        with open(os.path.join(it, "meta.json"), "w") as f:
            f.write('{"format": ')
    elif case == "latest":
        with open(os.path.join(d, "latest"), "w") as f:
            f.write("iter_0000099\n")
    elif case == "missing_file":
        os.remove(os.path.join(it, "rng_r00000.json"))


DAMAGE = {"truncated": "truncated or corrupt", "bit_flip": "sha256", "meta": "is not valid JSON",
          "latest": "has no meta.json", "missing_file": "is missing", "other_model": "was saved with --hidden-size 32"}


def _in_process(*argv):
    """pretrain_gpt.main in this process (a few runs are real processes; the rest are cheaper)."""
    return pretrain_in_process([*MODEL, *argv])


SUBPROCESS_CASES = ("truncated", "bit_flip")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    ckpt = str(base / "ckpt")
    out = _finish({"first": _start("--train-iters", "4", "--save", ckpt, "--save-interval", "2",
                                   "--eval-interval", "2", "--eval-iters", "1")})
    assert out["first"][0] == 0, out["first"][2]
    damaged, procs = {}, {}
    for case in DAMAGE:
        d = str(base / case)
        shutil.copytree(ckpt, d)
        _damage(d, case)
        damaged[case] = (d, _snapshot(d))
        argv = ["--train-iters", "6", "--load", d, "--save", d]
        if case == "other_model":
            argv += ["--hidden-size", "48"]
        if case in SUBPROCESS_CASES:
            procs[case] = _start(*argv)
        else:
            out[case] = _in_process(*argv)
    resumed = str(base / "resumed")
    shutil.copytree(ckpt, resumed)
    out["resume"] = _in_process("--train-iters", "6", "--load", resumed, "--save", resumed)
    out["uninterrupted"] = _in_process("--train-iters", "6")
    out["skip_train"] = _in_process("--load", ckpt, "--skip-train", "--eval-iters", "1")
    out.update(_finish(procs))
    return {"ckpt": ckpt, "resumed": resumed, "damaged": damaged, **out}


def test_periodic_and_final_saves_with_validation(runs):
    rc, stdout, _ = runs["first"]
    assert sorted(e for e in os.listdir(runs["ckpt"]) if e.startswith("iter_")) == ["iter_0000002", "iter_0000004"]
    with open(os.path.join(runs["ckpt"], "latest")) as f:
        assert f.read().strip() == "iter_0000004"
    assert len(re.findall(r"iteration +[24] \| validation loss: ", stdout)) == 2
    assert not any(e.startswith(".tmp") for e in os.listdir(runs["ckpt"]))


def test_resumed_run_equals_uninterrupted_run(runs):
    rc, stdout, stderr = runs["resume"]
    assert rc == 0, stderr
    assert _losses(runs["first"][1]) + _losses(stdout) == _losses(runs["uninterrupted"][1])
    assert checkpoint.latest_iteration(runs["resumed"]) == 6


def test_skip_train_prints_validation_loss_of_the_loaded_checkpoint(runs):
    rc, stdout, stderr = runs["skip_train"]
    assert rc == 0, stderr
    got = re.findall(r"^validation loss: (\S+)$", stdout, re.M)
    at_4 = re.findall(r"iteration +4 \| validation loss: (\S+)", runs["first"][1])
    assert got == at_4, (got, at_4)
    _, params = checkpoint.read_model_tensors(runs["ckpt"])
    rows = torch.from_numpy(np.stack([MockGPTDataset(16, 61, 6, 4)[i] for i in range(4)]).astype(np.int64))
    cfg = {"family": "gpt2", "num_layers": 2, "num_attention_heads": 4, "num_query_groups": 4, "norm_eps": 1e-5}
    with torch.no_grad():
        ref = reference_loss({k: v.double() for k, v in params.items()}, rows[:, :-1], rows[:, 1:], cfg).item()
    assert abs(float(got[0]) - ref) <= 1e-5 * ref


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_error_and_nothing_is_lost(runs, case):
    rc, stdout, stderr = runs[case]
    lines = stderr.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("pretrain_gpt.py: error: "), stderr
    assert DAMAGE[case] in lines[0], lines[0]
    d, before = runs["damaged"][case]
    assert _snapshot(d) == before  # no save ran, nothing was removed or rewritten
