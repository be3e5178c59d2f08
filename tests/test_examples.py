"""examples/*.sh run in CI at tiny sizes: each from a directory outside the checkout, with its
flags overridden by the ones after the script's name (the last one wins), on CPU ranks. A script
stops at the first failing step; the Slurm script's srun line is checked against the parser."""
import os
import shlex
import subprocess
import sys

import pytest

from megatron_galvatron.training.arguments import build_parser
from tests.dist_utils import run_launched
from tests.megatron_log import iteration_fields, lm_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
TINY_GPT = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
            "--max-position-embeddings", "16", "--vocab-size", "64", "--make-vocab-size-divisible-by", "4",
            "--global-batch-size", "4", "--micro-batch-size", "1", "--train-iters", "2", "--lr-warmup-iters", "1",
            "--log-interval", "1"]
TINY_LLAMA = ("--model-family llama --num-layers 2 --hidden-size 32 --num-attention-heads 4 --num-query-groups 2 "
              "--seq-length 16 --vocab-size 64 --make-vocab-size-divisible-by 4")


def _env(**extra):
    bindir = os.path.dirname(sys.executable)  # torchrun and python of this interpreter
    return dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1",
                PATH=bindir + os.pathsep + os.environ.get("PATH", ""), **extra)


def _script(name, args, cwd, timeout=300, **env):
    proc = run_launched(["bash", os.path.join(EXAMPLES, name)] + list(args), timeout, cwd=str(cwd), env=_env(**env))
    return proc


def _trained(proc, iters):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    losses = lm_losses(proc.stdout)
    assert sorted(losses) == list(range(1, iters + 1))
    assert all(0 < x < 10 for x in losses.values())
    return losses


def test_gpt2_small_from_another_directory(tmp_path):
    proc = _script("gpt2_small.sh", TINY_GPT, tmp_path, GPUS="1", SAVE="ckpt")
    _trained(proc, 2)
    assert "pp 1 x stage 1" in proc.stdout and "zero2" in proc.stdout
    assert (tmp_path / "ckpt").is_dir()  # relative paths are the caller's


def test_gpt2_medium_tp2_sequence_parallel_zero3(tmp_path):
    proc = _script("gpt2_medium.sh", TINY_GPT + ["--global-batch-size", "2"], tmp_path, GPUS="2")
    _trained(proc, 2)
    fields = iteration_fields(proc.stdout)
    assert int(fields[2]["consumed samples"]) == 4
    assert "zero3" in proc.stdout


def test_llama_7b_profiles_searches_and_trains_on_one_gpu(tmp_path):
    prof = tmp_path / "prof"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "profile_model.py")] + shlex.split(TINY_LLAMA) +
                       ["--dtype", "bf16", "--micro-batch-sizes", "1", "2", "--tp", "1", "--iters", "2", "--quiet",
                        "--out-dir", str(prof)], capture_output=True, text=True, timeout=300, env=_env(),
                       cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    proc = _script("llama_7b.sh", ["--train-iters", "2", "--lr-warmup-iters", "1"], tmp_path, GPUS="1",
                   PROFILES="prof", MEMORY_GB="4", PLAN="plan.json", MODEL=TINY_LLAMA,
                   SEARCH_ARGS="--global-batch-size 4 --no-plot")
    _trained(proc, 2)
    assert (tmp_path / "plan.json").is_file()
    assert int(iteration_fields(proc.stdout)[1]["global batch size"]) == 4  # the searched plan's batch


def test_llama_7b_stops_at_the_first_failure(tmp_path):
    proc = _script("llama_7b.sh", [], tmp_path, GPUS="1", PROFILES="nowhere")
    assert proc.returncode == 2 and "model.json" in proc.stderr and "iteration" not in proc.stdout
    (tmp_path / "prof").mkdir()
    (tmp_path / "prof" / "model.json").write_text("{}")
    proc = _script("llama_7b.sh", [], tmp_path, GPUS="1", PROFILES="prof", MODEL=TINY_LLAMA)
    assert proc.returncode == 2 and "search/run.py" in proc.stderr  # the search refused the profile
    assert "pretrain_gpt.py" not in proc.stderr and not (tmp_path / "plan_llama7b.json").exists()


def test_slurm_script_runs_one_torchrun_per_node_with_c10d_on_the_first(tmp_path):
    """srun and scontrol are stand-ins that record what the script asks of them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho gpu017\necho gpu018\n")
    (bin_dir / "srun").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/srun_args\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu[017-018]", SLURM_JOB_ID="4242", SLURM_GPUS_ON_NODE="8",
               SLURM_SUBMIT_DIR=ROOT, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", os.path.join(EXAMPLES, "slurm", "train.sbatch"), "--train-iters", "7"],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path), env=dict(os.environ, **env))
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "srun_args").read_text().splitlines()
    assert argv[:6] == ["--nodes", "2", "--ntasks-per-node", "1", "--kill-on-bad-exit=1", "python"]
    run = argv[argv.index("torch.distributed.run") + 1:]

    def opt(name):
        return run[run.index(name) + 1]
    assert opt("--nnodes") == "2" and opt("--nproc-per-node") == "8" and opt("--rdzv-backend") == "c10d"
    assert opt("--rdzv-endpoint") == "gpu017:29500" and opt("--rdzv-id") == "4242"
    script = next(a for a in run if a.endswith("pretrain_gpt.py"))
    assert script == os.path.join(ROOT, "pretrain_gpt.py")
    args = build_parser().parse_args(run[run.index(script) + 1:])
    assert args.train_iters == 7 and args.global_tp_deg == 8 and args.bf16  # the flag after the script won


def test_slurm_script_outside_an_allocation_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", os.path.join(EXAMPLES, "slurm", "train.sbatch")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)
    assert proc.returncode != 0 and "Slurm allocation" in proc.stderr


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(EXAMPLES) if n.endswith(".sh")))
def test_every_example_stops_on_the_first_failure(name):
    text = open(os.path.join(EXAMPLES, name)).read()
    assert "set -euo pipefail" in text


def test_multinode_example_without_master_addr_is_one_line(tmp_path):
    env = {k: v for k, v in _env().items() if k != "MASTER_ADDR"}
    proc = subprocess.run(["bash", os.path.join(EXAMPLES, "multinode_torchrun.sh")], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path), env=env)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1 and "MASTER_ADDR" in proc.stderr
