"""Checkpoints are precision-independent: saved by a plan with float8 layers on 4 ranks, resumed
by another float8 layout on 2 ranks on the uninterrupted run's losses, and by a bf16 plan on 2
ranks with the saved weights, iteration and data position."""
import os

import pytest
import torch

from megatron_galvatron import checkpoint
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.plan import LayerStrategy as L
from megatron_galvatron.plan import Plan, uniform
from megatron_galvatron.plan import VocabStrategy as V
from tests.dist_utils import run_distributed
from tests.equivalence import tiny_cfg
from tests.megatron_log import lm_losses
from tests.test_checkpoint_resume import _losses, _trainer

pytest.importorskip("torchao")

SAVE_AT, MORE = 3, 2
FP8_4 = Plan(world_size=4, pp_deg=2, pp_division=[2, 2], global_bsz=8, chunks=2,
             layers=[L(tp=2, dp_type="zero3", fp8="tensorwise"), L(tp=1, dp_type="zero2", fp8="rowwise"),
                     L(tp=2, sp=True, checkpoint=True, fp8="tensorwise"), L(tp=1)],
             vocab=V(tp=1, dp_type="zero3"))
FP8_2 = uniform(2, 4, tp=2, sp=True, global_bsz=8, chunks=2)
FP8_2.layers = [L(tp=2, sp=True, fp8="tensorwise"), L(tp=1, dp_type="zero3", fp8="rowwise"),
                L(tp=2, fp8="tensorwise"), L(tp=2, sp=True)]
BF16_2 = uniform(2, 4, dp_type="zero3", global_bsz=8, chunks=2)


def _save(rank, world, root):
    tr = _trainer(tiny_cfg("llama"), FP8_4.to_dict(), world)
    _losses(tr, SAVE_AT)
    checkpoint.save(tr.checkpoint_state(), root)
    saved = gather_model(tr.stage)
    return {"saved": saved, "next": _losses(tr, MORE)}


def _resume(rank, world, root):
    out = {}
    for name, plan in (("fp8", FP8_2), ("bf16", BF16_2)):
        tr = _trainer(tiny_cfg("llama"), plan.to_dict(), world, ["--load", root])
        out[name] = {"iteration": tr.iteration, "consumed": tr.consumed_samples, "params": gather_model(tr.stage),
                     "next": _losses(tr, MORE)}
    return out


def test_fp8_checkpoint_resumes_under_other_layouts_and_bf16(tmp_path):
    root = str(tmp_path / "ckpt")
    before = run_distributed(4, _save, root)[-1]  # the last rank holds the last stage's losses
    after = run_distributed(2, _resume, root)[-1]
    for name in ("fp8", "bf16"):
        got = after[name]
        assert got["iteration"] == SAVE_AT and got["consumed"] == SAVE_AT * 8
        for k, t in before["saved"].items():
            assert torch.equal(got["params"][k], t), (name, k)
    # the float8 layout on 2 ranks computes what the one on 4 did: the same scales per micro-batch
    for a, b in zip(after["fp8"]["next"], before["next"]):
        assert abs(a - b) / abs(b) < 1e-5, (after["fp8"]["next"], before["next"])
    # in bf16 the same weights give nearly the same loss: float8 rounds each matmul's operands
    for a, b in zip(after["bf16"]["next"], before["next"]):
        assert a != b and abs(a - b) / abs(b) < 2e-2, (after["bf16"]["next"], before["next"])


def test_fp8_plan_without_torchao_is_one_line_and_bf16_trains(tmp_path):
    """torchao is optional: a bf16 run needs none, a float8 one is refused before it builds anything."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tiny = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
            "--vocab-size", "64", "--mock-data", "--train-iters", "2"]
    code = ("import runpy, sys; sys.modules['torchao'] = None\n"
            "sys.argv = ['pretrain_gpt.py'] + sys.argv[1:]\n"
            "runpy.run_path('pretrain_gpt.py', run_name='__main__')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    fp8 = subprocess.run([sys.executable, "-c", code, *tiny, "--fp8", "tensorwise"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert fp8.returncode == 2 and "iteration" not in fp8.stdout
    assert fp8.stderr.strip().splitlines() == [
        "pretrain_gpt.py: error: float8 layers (\"fp8\" in the plan, --fp8) need torchao (pip install torchao==0.18.0)"]
    bf16 = subprocess.run([sys.executable, "-c", code, *tiny], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert bf16.returncode == 0 and sorted(lm_losses(bf16.stdout)) == [1, 2], bf16.stderr
