"""The launch environment a run reads. torchrun (and torchx, and `srun torchrun`) sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a job step that srun starts directly, one
task per GPU, sets only Slurm's own variables, which this module translates (docs/launch.md)."""
import os
import re
from typing import MutableMapping, Optional

DEFAULT_PORT = "29500"


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: "gpu[003-010,12],cpu1" -> "gpu003"."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"not a Slurm hostlist: {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]  # the first number keeps its zero padding


def adopt_slurm_env(env: Optional[MutableMapping[str, str]] = None) -> bool:
    """Under an `srun` step of several tasks and no torchrun, set torchrun's variables from Slurm's:
    RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR =
    the step's first node, MASTER_PORT = 29500 unless set. Returns whether it did."""
    env = os.environ if env is None else env
    if "RANK" in env or int(env.get("SLURM_STEP_NUM_TASKS", "1")) < 2:
        return False  # torchrun's own, or one process (a batch script runs once, not per task)
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_STEP_NUM_TASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", first_host(nodes))
    env.setdefault("MASTER_PORT", DEFAULT_PORT)
    return True
