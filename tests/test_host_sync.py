"""Host synchronisation inside a step: the recorder on CPU (CUDA's check replaced by a stand-in
that raises its warning), the whole check on GPUs when there are any."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from megatron_galvatron.benchmark.host_sync import SYNC_WARNING, describe, host_syncs
from tests.dist_utils import run_launched

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_records_each_synchronising_call_with_its_place():
    modes = []

    def blocking_copy():
        warnings.warn(f"{SYNC_WARNING} here")

    def step():
        blocking_copy()
        warnings.warn("something else")  # not a synchronisation: ignored
        blocking_copy()

    found = host_syncs(step, 3, set_mode=modes.append)
    assert modes == ["warn", "default"]  # the check is switched off again
    assert len(found) == 6
    assert "blocking_copy" in found[0].stack[-1] and "test_host_sync.py" in found[0].where
    text = describe(found, 3)
    assert text.startswith("6 host synchronisations in 3 steps") and "6 x at" in text
    assert describe([], 2) == "no host synchronisation in 2 steps"


def test_the_check_is_off_after_a_failing_step():
    modes = []

    def step():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        host_syncs(step, 1, set_mode=modes.append)
    assert modes == ["warn", "default"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's synchronisation check needs a GPU")
def test_the_check_sees_item_and_blocking_copies_on_a_gpu():
    x = torch.ones(1024, device="cuda")

    def step():
        (x * 2).sum().item()
        torch.arange(64).to("cuda", non_blocking=False)
    found = host_syncs(step, 2)
    assert len(found) >= 4 and all("test_host_sync.py" in f.where for f in found)
    assert host_syncs(lambda: torch.arange(64).pin_memory().to("cuda", non_blocking=True), 2) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's synchronisation check needs a GPU")
def test_training_steps_never_wait_on_the_gpu():
    n = min(2, torch.cuda.device_count())
    plans = ["tp=1,dp=ddp,gbs=8,chunks=2", "tp=1,dp=zero2,gbs=8,chunks=2", "tp=1,dp=zero3,ckpt=1,gbs=8,chunks=2"]
    if n == 2:
        plans += ["tp=2,dp=ddp,sp=1,gbs=8,chunks=2", "pp=2,dp=ddp,gbs=8,chunks=4", "pp=2,dp=ddp,gbs=8,chunks=4,sched=gpipe"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           os.path.join(ROOT, "tools", "check_host_sync.py"), "--model-family", "gpt2", "--num-layers", "4",
           "--hidden-size", "256", "--num-attention-heads", "8", "--seq-length", "256", "--vocab-size", "1024",
           "--bf16", "--mock-data", "--global-plans", *plans]
    out = run_launched(cmd, 600)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count("no host synchronisation") == len(plans)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_without_a_gpu_the_tool_says_so_in_one_line():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "check_host_sync.py"), "--num-layers", "2",
                          "--global-plans", "tp=1,dp=ddp,gbs=2,chunks=1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "check_host_sync.py: error: the synchronisation check is CUDA's: run it on GPUs"
