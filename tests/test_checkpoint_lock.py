"""One run per save root: a running pretrain_gpt.py holds <save>/.lock, a second run into the same
root stops at start-up naming the first (host, pid) and changes nothing on disk; once the first
is killed with SIGKILL its lock is taken over and the temporary directory it left is removed.
All real processes: the lock is an flock, which only other processes can contend for."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint.format import TMP_PREFIX, converted_meta
from megatron_galvatron.checkpoint.lock import LOCK, acquire
from megatron_galvatron.checkpoint.tensors import write_checkpoint
from tests.dist_utils import run_distributed
from tests.test_checkpoint_tamper import MODEL, ROOT, _main

HOLD = """
import sys, time
from megatron_galvatron.checkpoint.lock import acquire
lock = acquire({root!r})
print("held", flush=True)
time.sleep(600)
"""


def _pretrain(*argv):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *MODEL, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _snapshot(d):
    out = {}
    for dirpath, _, files in os.walk(d):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), d)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _lock_pid(root):
    try:
        with open(os.path.join(root, LOCK)) as f:
            return json.loads(f.read() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def test_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    root = str(tmp_path / "ckpt")
    rc, _, err = _main("--train-iters", "2", "--save", root)
    assert rc == 0, err
    # The first run: resumes and trains on, with no save due for a long time.
    first = _pretrain("--train-iters", "100000000", "--load", root, "--save", root, "--save-interval", "100000000",
                      "--log-interval", "100000000")
    try:
        deadline = time.time() + 120
        while _lock_pid(root) != first.pid:
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "no lock"
            time.sleep(0.05)
        os.makedirs(os.path.join(root, TMP_PREFIX + "iter_0000009"))  # as a save of the first run would leave it
        with open(os.path.join(root, TMP_PREFIX + "iter_0000009", "r00000-000.safetensors"), "wb") as f:
            f.write(b"partial")
        before = _snapshot(root)

        second = _pretrain("--train-iters", "4", "--save", root)
        _, err = second.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert f"pid {first.pid}" in lines[0] and f"host {socket.gethostname()}" in lines[0], lines[0]
        assert "is in use by another run" in lines[0]
        with pytest.raises(checkpoint.CheckpointError, match=f"pid {first.pid}"):  # a converter is refused too
            write_checkpoint(root, converted_meta({"num_layers": 1}), iter([("model/w", torch.zeros(2))]))
        assert _snapshot(root) == before  # neither touched the first run's files, its tmp dir, or its lock
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL

    rc, out, err = _main("--train-iters", "3", "--load", root, "--save", root)  # the stale lock is taken over
    assert rc == 0, err
    assert checkpoint.latest_iteration(root) == 3
    assert not [e for e in os.listdir(root) if e.startswith(TMP_PREFIX)]  # the dead run's leftovers are gone
    assert _lock_pid(root) == os.getpid()


def test_lock_is_reentrant_in_its_process_and_released_on_exit(tmp_path):
    root = str(tmp_path / "r")
    lock = acquire(root)
    assert lock is not None and acquire(root) is None  # this process again: the save inside a run
    holder = subprocess.run([sys.executable, "-c", HOLD.format(root=root)], capture_output=True, text=True, timeout=60)
    assert holder.returncode == 1 and f"pid {os.getpid()}" in holder.stderr.strip().splitlines()[-1]
    lock.release()
    child = subprocess.Popen([sys.executable, "-c", HOLD.format(root=root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(checkpoint.CheckpointError, match=f"pid {child.pid}"):
            acquire(root)
    finally:
        child.kill()
        child.wait()
    again = acquire(root)  # the kernel released the killed child's flock
    assert again is not None
    again.release()


def _lock_on_ranks(rank, world, root):
    try:
        checkpoint.lock_save_root(root, rank)
    except checkpoint.CheckpointError as e:
        return str(e)
    return None


def test_every_rank_of_a_refused_run_stops_and_none_waits(tmp_path):
    root = str(tmp_path / "r")
    lock = acquire(root)  # this test process plays the run that holds the root
    try:
        errors = run_distributed(2, _lock_on_ranks, root, timeout=120)
    finally:
        lock.release()
    assert errors[0] == errors[1] and f"pid {os.getpid()}" in errors[0], errors


def test_converter_cli_into_a_held_root_is_one_line(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    rc, _, err = _main("--train-iters", "1", "--save", src)
    assert rc == 0, err
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(checkpoint.read_meta(checkpoint.resolve(src))["plan"]))
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=dst)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), "reshard", "--load",
                            src, "--galvatron-config", str(plan), "--save", dst], capture_output=True, text=True,
                           timeout=300)
    finally:
        holder.kill()
        holder.wait()
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("convert_checkpoint.py: error: ") and f"pid {holder.pid}" in lines[0], lines[0]
    assert os.listdir(dst) == [LOCK]
