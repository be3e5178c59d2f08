"""Start the ranks of a pretrain_gpt.py run as separate processes, without a launcher, so that a
test can send a real signal to one of them or watch each one's exit status."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional

from tests.dist_utils import _free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "pretrain_gpt.py")
TINY = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "64", "--make-vocab-size-divisible-by", "4", "--mock-data", "--global-batch-size", "8",
        "--lr", "1e-2", "--hidden-dropout", "0.1", "--attention-dropout", "0.1"]


def env(**extra) -> dict:
    return dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), **extra)


@dataclass
class Ranks:
    procs: List[subprocess.Popen]
    logs: List[str]
    codes: Optional[List[int]] = None  # exit statuses, once waited for

    def wait(self, timeout: float) -> List[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def output(self, rank: int) -> str:
        with open(self.logs[rank]) as f:
            return f.read()


def start(flags: List[str], world: int, logdir: str, script: str = PRETRAIN, extra_env=None) -> Ranks:
    """`world` processes of `script flags`, each with the environment torchrun would give it."""
    port = str(_free_port())
    procs, logs = [], []
    for r in range(world):
        extra = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), WORLD_SIZE=str(world),
                     LOCAL_RANK=str(r)) if world > 1 else {}
        extra.update(extra_env or {})
        logs.append(os.path.join(logdir, f"rank{r}.log"))
        with open(logs[-1], "w") as out:
            procs.append(subprocess.Popen([sys.executable, script] + flags, env=env(**extra), cwd=ROOT, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    return Ranks(procs, logs)


def run(flags: List[str], world: int, logdir: str, timeout: float = 120, script: str = PRETRAIN,
        extra_env=None) -> Ranks:
    ranks = start(flags, world, logdir, script, extra_env)
    ranks.codes = ranks.wait(timeout)
    return ranks


def losses(metrics_json: str) -> dict:
    """iteration -> loss, the last record of each iteration (a restarted run logs some again)."""
    out = {}
    with open(metrics_json) as f:
        for line in f:
            rec = json.loads(line)
            out[rec["iteration"]] = rec["loss"]
    return out


def _logged(metrics_json: str) -> int:
    """The last iteration in a metrics file another process is writing (its last line may be partial)."""
    if not os.path.exists(metrics_json):
        return 0
    with open(metrics_json) as f:
        done = [line for line in f.read().split("\n")[:-1] if line]
    return json.loads(done[-1])["iteration"] if done else 0


def wait_for_iteration(metrics_json: str, iteration: int, ranks: Ranks, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _logged(metrics_json) >= iteration:
            return
        if any(p.poll() is not None for p in ranks.procs):
            raise AssertionError("a rank ended early:\n" + ranks.output(len(ranks.procs) - 1)[-3000:])
        time.sleep(0.02)
    ranks.kill()
    raise AssertionError(f"iteration {iteration} never logged")
