"""Two "nodes" on one machine: examples/multinode_torchrun.sh started twice, i.e. two torchrun
launchers (--nnodes 2 --nproc-per-node 2, c10d rendezvous on 127.0.0.1, CPU gloo), trains a
plan whose tensor parallelism (2) stays inside a node and whose data parallelism spans both; the
losses and the saved parameters match one plain float32 process."""
import os
import subprocess
import sys
import uuid

from megatron_galvatron.checkpoint.tensors import read_model_tensors
from tests.dist_utils import _free_port
from tests.megatron_log import lm_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every flag of the example's own but its parallel ones is overridden (the last one given wins).
FLAGS = ["--model-family", "llama", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
         "--num-query-groups", "2", "--seq-length", "16", "--vocab-size", "64", "--make-vocab-size-divisible-by", "4",
         "--mock-data", "--global-batch-size", "8", "--micro-batch-size", "2", "--lr", "1e-2", "--min-lr", "0",
         "--lr-warmup-iters", "0", "--train-iters", "4", "--weight-decay", "0.01", "--clip-grad", "1.0",
         "--log-interval", "1", "--seed", "3"]
ITERS = 4


def _env(**extra):
    return dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning", OMP_NUM_THREADS="1",
                PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), **extra)


def _run_two_nodes(flags, cwd, timeout=420):
    node_env = _env(NNODES="2", GPUS="2", TP="2", PRECISION="", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(_free_port()), RUN_ID=uuid.uuid4().hex[:8])
    launchers = []
    for _ in range(2):  # the same command on each "node"
        cmd = ["bash", os.path.join(ROOT, "examples", "multinode_torchrun.sh")] + flags
        launchers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=node_env, cwd=str(cwd), start_new_session=True))
    outs = []
    try:
        for p in launchers:
            out, err = p.communicate(timeout=timeout)
            outs.append((p.returncode, out, err))
    finally:
        for p in launchers:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    for rc, out, err in outs:
        assert rc == 0, f"exit {rc}\n{out[-3000:]}\n{err[-3000:]}"
    return outs


def test_two_torchrun_nodes_tp_inside_dp_across_match_one_process(tmp_path):
    single = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_gpt.py")] + FLAGS +
                            ["--save", str(tmp_path / "one")], capture_output=True, text=True, env=_env(),
                            cwd=ROOT, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = lm_losses(single.stdout)
    # TP groups are consecutive ranks, and torchrun numbers each node's ranks consecutively: the
    # two TP pairs are the two nodes, and each layer's DP pair takes one rank from each node.
    outs = _run_two_nodes(FLAGS + ["--save", str(tmp_path / "two")], tmp_path)
    logged = [lm_losses(out) for _, out, _ in outs]
    assert sorted(len(x) for x in logged) == [0, ITERS]  # the logging rank is on one node only
    two = next(x for x in logged if x)
    plan_text = "".join(out for _, out, _ in outs)
    assert "world 4 = pp 1 x stage 4" in plan_text
    assert sorted(two) == sorted(reference) == list(range(1, ITERS + 1))
    for it in reference:
        assert abs(two[it] - reference[it]) <= 1e-5 * abs(reference[it]), (it, two[it], reference[it])
    _, want = read_model_tensors(str(tmp_path / "one"))
    meta, got = read_model_tensors(str(tmp_path / "two"))
    assert meta["world_size"] == 4 and sorted(got) == sorted(want)
    assert all(layer["tp"] == 2 and layer["tp_consec"] and layer["dp_type"] == "zero2" for layer in meta["plan"]["layers"])
    for name, w in want.items():  # relative to the tensor's norm, as every equivalence test measures
        err = ((got[name].double() - w.double()).norm() / w.double().norm()).item()
        assert err <= 1e-4, f"{name}: relative error {err}"
