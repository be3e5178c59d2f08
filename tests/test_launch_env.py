"""pretrain_gpt.py under `srun` alone (one task per rank, no torchrun): Slurm's variables become
torchrun's, and two such tasks train as a torchrun job of two would, with one process's losses."""
import os
import subprocess
import sys

import pytest

from megatron_galvatron.launch_env import adopt_slurm_env, first_host
from tests.dist_utils import _free_port
from tests.megatron_log import lm_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "64", "--make-vocab-size-divisible-by", "4", "--mock-data", "--global-batch-size", "4",
        "--lr", "1e-2", "--train-iters", "3"]


@pytest.mark.parametrize("nodelist, host", [("gpu017", "gpu017"), ("gpu[017-020]", "gpu017"),
                                             ("gpu[3,5-7],cpu1", "gpu3"), ("a-b12,c", "a-b12")])
def test_first_host_of_a_slurm_hostlist(nodelist, host):
    assert first_host(nodelist) == host


def test_slurm_step_variables_become_torchruns():
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "node[04-05]"}
    assert adopt_slurm_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == \
        ("5", "16", "1", "node04", "29500")


def test_torchrun_or_a_single_task_is_left_alone():
    under_torchrun = {"RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    assert not adopt_slurm_env(under_torchrun) and under_torchrun["RANK"] == "3"
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}  # the batch step itself runs once
    assert not adopt_slurm_env(batch_script) and "RANK" not in batch_script


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("SLURM_")}
    env.update(PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), **extra)
    return env


def test_two_srun_tasks_train_like_one_process(tmp_path):
    script = [sys.executable, os.path.join(ROOT, "pretrain_gpt.py")]
    one = subprocess.run(script + TINY, capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(_free_port())
    tasks = [subprocess.Popen(script + TINY + ["--default-dp-type", "zero2"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=_env(SLURM_PROCID=str(r), SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID=str(r),
                                       SLURM_STEP_NODELIST="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    outs = [t.communicate(timeout=300) for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outs[1][1][-3000:]
    assert "world 2" in outs[0][0]
    want, got = lm_losses(one.stdout), lm_losses(outs[1][0])
    assert sorted(got) == sorted(want) == [1, 2, 3]
    for it in want:
        assert abs(got[it] - want[it]) <= 1e-5 * abs(want[it])
