"""Stopping early and resuming, on real processes with real signals: SIGINT or SIGTERM (to one
rank of four) under --exit-signal-handler, --exit-interval and --exit-duration-in-mins stop
every rank after the same step with a checkpoint and exit status 0, and relaunching the same
command resumes on the loss trajectory of an uninterrupted run, bit for bit. The background
(--async-save) checkpoint holds the same bytes as the synchronous one. A rank that dies makes the
others stop with one line and status 3, and torchrun --max-restarts restarts the run from the
last checkpoint."""
import json
import os
import signal
import sys

import pytest

from megatron_galvatron.checkpoint import latest_iteration
from tests.dist_utils import run_launched
from tests.rank_launch import ROOT, TINY, env, losses, run, start, wait_for_iteration

ITERS1, ITERS4 = 16, 24
FLAGS1 = TINY + ["--train-iters", str(ITERS1)]
# pp 2 x dp 2, 1F1B over 2 micro-batches, dropout on: the RNG streams and data position matter
FLAGS4 = TINY + ["--train-iters", str(ITERS4), "--pp-deg", "2", "--micro-batch-size", "2", "--save-interval", "5"]


def _resumable(d) -> list:
    """The flags of a job that resumes itself: --load and --save the same directory."""
    return ["--save", str(d / "ckpt"), "--load", str(d / "ckpt"), "--metrics-json", str(d / "metrics.json")]


def _ok(ranks) -> None:
    assert ranks.codes == [0] * len(ranks.procs), "\n".join(ranks.output(r)[-2000:] for r in range(len(ranks.procs)))


def _launch(tmp_path, name, flags, world):
    d = tmp_path / name
    d.mkdir()
    return run(flags, world, str(d))


@pytest.fixture(scope="module")
def uninterrupted1(tmp_path_factory):
    d = tmp_path_factory.mktemp("uninterrupted1")
    ranks = run(FLAGS1 + ["--metrics-json", str(d / "metrics.json")], 1, str(d))
    _ok(ranks)
    return losses(d / "metrics.json")


@pytest.fixture(scope="module")
def uninterrupted4(tmp_path_factory):
    """The 4-rank run without interruption, saving synchronously every 5 iterations."""
    d = tmp_path_factory.mktemp("uninterrupted4")
    ranks = run(FLAGS4 + ["--save", str(d / "ckpt"), "--metrics-json", str(d / "metrics.json")], 4, str(d))
    _ok(ranks)
    return losses(d / "metrics.json"), d / "ckpt"


def test_one_process_stops_on_sigint_exit_interval_and_exit_duration_and_resumes_bit_exactly(tmp_path, uninterrupted1):
    flags = FLAGS1 + _resumable(tmp_path)
    (tmp_path / "first").mkdir()
    ranks = start(flags + ["--exit-signal-handler"], 1, str(tmp_path / "first"))
    wait_for_iteration(str(tmp_path / "metrics.json"), 2, ranks)
    os.kill(ranks.procs[0].pid, signal.SIGINT)
    ranks.codes = ranks.wait(60)
    _ok(ranks)
    stopped = max(losses(tmp_path / "metrics.json"))
    assert stopped < 10, "the run went on too long after the signal"
    assert f"exiting at iteration {stopped}: SIGINT received" in ranks.output(0)
    assert latest_iteration(str(tmp_path / "ckpt")) == stopped

    second = _launch(tmp_path, "second", flags + ["--exit-interval", "10"], 1)
    _ok(second)
    assert "exiting at iteration 10: --exit-interval 10" in second.output(0)
    assert latest_iteration(str(tmp_path / "ckpt")) == 10
    # The budget is spent before the first step ends: the run stops after one step.
    third = _launch(tmp_path, "third", flags + ["--exit-duration-in-mins", "1e-4"], 1)
    _ok(third)
    assert "exiting at iteration 11: --exit-duration-in-mins 0.0001 passed" in third.output(0)
    assert latest_iteration(str(tmp_path / "ckpt")) == 11
    _ok(_launch(tmp_path, "last", flags, 1))
    assert losses(tmp_path / "metrics.json") == uninterrupted1


def test_sigterm_to_one_of_four_ranks_stops_all_and_async_save_resumes_bit_exactly(tmp_path, uninterrupted4):
    reference, sync_ckpt = uninterrupted4
    flags = FLAGS4 + _resumable(tmp_path) + ["--exit-signal-handler", "--async-save"]
    (tmp_path / "first").mkdir()
    ranks = start(flags, 4, str(tmp_path / "first"))
    wait_for_iteration(str(tmp_path / "metrics.json"), 2, ranks)
    os.kill(ranks.procs[1].pid, signal.SIGTERM)  # a first-stage rank that neither logs nor leads the save
    ranks.codes = ranks.wait(90)
    _ok(ranks)
    stopped = max(losses(tmp_path / "metrics.json"))
    assert stopped < ITERS4, "the run ended before the signal arrived"
    assert f"exiting at iteration {stopped}: a signal received by another rank" in ranks.output(0)
    assert latest_iteration(str(tmp_path / "ckpt")) == stopped
    _ok(_launch(tmp_path, "second", flags, 4))
    assert losses(tmp_path / "metrics.json") == reference
    # The same state written in the background and synchronously: the same files, byte for byte.
    for it in (5, 10):
        ours, theirs = (json.loads((root / f"iter_{it:07d}" / "meta.json").read_text()) for root in
                        (tmp_path / "ckpt", sync_ckpt))
        assert ours["files"] == theirs["files"] and ours["tensors"] == theirs["tensors"]
        assert any(f.startswith("r00003") for f in ours["files"])  # every rank wrote a share


def test_a_killed_rank_makes_the_others_stop_with_one_line(tmp_path):
    flags = TINY + ["--train-iters", "8", "--pp-deg", "2"]
    d = tmp_path / "run"
    d.mkdir()
    ranks = run(flags, 2, str(d), script=os.path.join(ROOT, "tests", "dying_rank.py"),
                extra_env=dict(DYING_RANK="1", DYING_AT="3", DYING_MARKER=str(tmp_path / "died")))
    assert ranks.codes == [3, -signal.SIGKILL]
    out = ranks.output(0)
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("pretrain_gpt.py: error: a peer rank stopped (") and last.endswith("); exiting"), last


def test_torchrun_max_restarts_resumes_from_the_last_checkpoint(tmp_path):
    # torch 2.13's launcher keeps one store across restarts, and gloo then reads the dead
    # workers' addresses from it (pytorch/pytorch#135712); the opt-out gives each attempt its own.
    e = env(DYING_RANK="1", DYING_AT="7", DYING_MARKER=str(tmp_path / "died"), TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
           "1", os.path.join(ROOT, "tests", "dying_rank.py")] + TINY + \
        ["--train-iters", "8", "--pp-deg", "2", "--save-interval", "5"] + _resumable(tmp_path)
    proc = run_launched(cmd, 180, cwd=ROOT, env=e)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert os.path.exists(tmp_path / "died")
    assert "loaded checkpoint" in proc.stdout and "at iteration 5 " in proc.stdout
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6, 6, 7, 8]  # 6 again, after the restart
    assert records[5]["loss"] == records[6]["loss"]  # the restarted run goes on where the first left off
