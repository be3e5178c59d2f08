"""A process killed with SIGKILL in the middle of a save leaves the last complete checkpoint
loadable: a real child saves a ~50 MB checkpoint (model + AdamW state, several files) over and
over and is killed while a later save is writing its files."""
import os
import signal
import subprocess
import sys
import time

import torch

from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint.format import META, TMP_PREFIX
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--mock-data", "--num-layers", "4", "--hidden-size", "256", "--num-attention-heads", "4",
         "--ffn-hidden-size", "1024", "--vocab-size", "4096", "--seq-length", "16", "--global-batch-size", "2",
         "--train-iters", "1"]

CHILD = """
import sys
sys.path.insert(0, {root!r})
from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint import tensors
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import setup, train_step
tensors.FLUSH_BYTES = 8 << 20  # several files per save: a wide window to be killed in
tr = setup(build_parser().parse_args({argv!r}))
train_step(tr)
for k in range(1, 100000):
    tr.iteration = k
    checkpoint.save(tr.checkpoint_state(), {ckpt!r})
    print("saved", k, flush=True)
"""


def _tmp_dirs(root):
    try:
        return [e for e in os.listdir(root) if e.startswith(TMP_PREFIX)]
    except FileNotFoundError:
        return []


def test_sigkill_during_save_keeps_last_checkpoint_loadable(tmp_path):
    root = str(tmp_path / "ckpt")
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=ROOT, argv=MODEL, ckpt=root)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().split() == ["saved", "1"], child.stderr.read()
        deadline = time.time() + 120
        while time.time() < deadline:  # kill once a later save has written some files, before its meta.json
            tmp = _tmp_dirs(root)
            if tmp:
                files = os.listdir(os.path.join(root, tmp[0])) if os.path.isdir(os.path.join(root, tmp[0])) else []
                if any(f.endswith(".safetensors") for f in files) and META not in files:
                    os.kill(child.pid, signal.SIGKILL)
                    break
            time.sleep(0.001)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _tmp_dirs(root), "the kill did not land inside a save"

    d = checkpoint.resolve(root)
    meta = checkpoint.read_meta(d)
    assert meta["iteration"] >= 1
    for entry in os.listdir(root):  # every published checkpoint is complete and intact
        if entry.startswith("iter_"):
            checkpoint.verify(os.path.join(root, entry), checkpoint.read_meta(os.path.join(root, entry)))

    tr = setup(build_parser().parse_args(MODEL + ["--load", root, "--save", root]))
    assert tr.iteration == meta["iteration"]
    _, stored = checkpoint.read_model_tensors(root)
    for name, t in gather_model(tr.stage).items():
        assert torch.equal(t, stored[name]), name
    assert all(len(s) == 3 for s in tr.optimizer.state.values()) and tr.optimizer.state

    tr.iteration += 1  # the next save clears the interrupted one and becomes the latest
    path = checkpoint.save(tr.checkpoint_state(), root)
    assert not _tmp_dirs(root) and checkpoint.resolve(root) == path
