"""Checkpoints are plan-independent: saved under plan A on 4 ranks (pipeline, TP, ZeRO-2/3, SP,
tied embedding across stages), loaded under other plans on 4 and 2 ranks (Ulysses among them), training goes on with
the losses of the uninterrupted run (same plan: bit-exact, dropout included; other plans: within
1e-5), the LR schedule and data position carried over; evaluation matches the independent
reference model."""
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from megatron_galvatron import checkpoint
from megatron_galvatron.data.mock_dataset import MockGPTDataset
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.plan import LayerStrategy as L
from megatron_galvatron.plan import Plan, uniform
from megatron_galvatron.plan import VocabStrategy as V
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import evaluate, reduce_loss, setup, train_step
from tests.dist_utils import run_distributed
from tests.equivalence import tiny_cfg
from tests.plan_runner import model_argv
from tests.reference_model import reference_loss

STEPS, SAVE_AT, EVAL_ITERS, SEED = 6, 3, 2, 7

PLAN_A = Plan(world_size=4, pp_deg=2, pp_division=[2, 2], global_bsz=8, chunks=2,
              layers=[L(tp=2, dp_type="zero3"), L(tp=1, dp_type="zero3", checkpoint=True),
                      L(tp=2, sp=True, dp_type="ddp"), L(tp=1, dp_type="zero2")],
              vocab=V(tp=1, dp_type="zero3"))
PLAN_B4 = uniform(4, 4, tp=2, tp_consec=False, sp=True, dp_type="zero2", global_bsz=8, chunks=1)
PLAN_B2 = [uniform(2, 4, pp_deg=2, pp_division=[1, 3], global_bsz=8, chunks=4, pipeline_type="gpipe"),
           uniform(2, 4, dp_type="zero3", global_bsz=8, chunks=2),
           # Ulysses layers and vocabulary (the evaluation scores each rank's sequence chunk)
           Plan(world_size=2, pp_deg=1, pp_division=[4], global_bsz=8, chunks=2,
                layers=[L(tp=2, sp="ulysses", dp_type="zero3"), L(tp=2, sp=True), L(tp=2, sp="ulysses"),
                        L(tp=1, dp_type="zero2")], vocab=V(tp=2, sp="ulysses", dp_type="zero2"))]


def _trainer(cfg, plan_dict, world, extra=()):
    argv = model_argv(cfg, STEPS, 1e-3, 1.0, seed=SEED) + [
        "--lr-decay-style", "cosine", "--lr-warmup-iters", "2", "--min-lr", "1e-4", "--eval-iters", str(EVAL_ITERS),
        *extra]
    return setup(build_parser().parse_args(argv), Plan.from_dict(plan_dict).validate(world_size=world))


def _losses(tr, n):
    """Losses of the next n steps (meaningful on the last stage)."""
    return [reduce_loss(tr, train_step(tr).loss_sum).item() for _ in range(n)]


def _resume(cfg, plan_dict, world, root):
    tr = _trainer(cfg, plan_dict, world, ["--load", root])
    out = {"iteration": tr.iteration, "consumed": tr.consumed_samples, "params": gather_model(tr.stage),
           "eval": evaluate(tr)}  # evaluating first also shows it leaves training untouched
    out["losses"] = _losses(tr, STEPS - SAVE_AT)
    out["lr"] = tr.lr_schedule(tr.iteration - 1)
    return out


def _world4(rank, world, root):
    out = {}
    for family, extra in (("gpt2", []), ("llama", ["--hidden-dropout", "0.1", "--attention-dropout", "0.1"])):
        cfg, path = tiny_cfg(family), os.path.join(root, family)
        tr = _trainer(cfg, PLAN_A.to_dict(), world, extra)
        first = _losses(tr, SAVE_AT)
        checkpoint.save(tr.checkpoint_state(), path)
        saved = gather_model(tr.stage)
        out[family] = {"uninterrupted": first + _losses(tr, STEPS - SAVE_AT), "saved": saved,
                       "final": gather_model(tr.stage)}
        tr = _trainer(cfg, PLAN_A.to_dict(), world, extra + ["--load", path])
        out[family]["same"] = {"losses": _losses(tr, STEPS - SAVE_AT), "params": gather_model(tr.stage)}
    out["gpt2"]["same_eval"] = _resume(tiny_cfg("gpt2"), PLAN_A.to_dict(), world, os.path.join(root, "gpt2"))
    out["gpt2"]["b4"] = _resume(tiny_cfg("gpt2"), PLAN_B4.to_dict(), world, os.path.join(root, "gpt2"))
    return out


def _world2(rank, world, root):
    return [_resume(tiny_cfg("gpt2"), p.to_dict(), world, os.path.join(root, "gpt2")) for p in PLAN_B2]


def _reference_eval(params, cfg):
    """Mean loss over the first EVAL_ITERS global batches of the validation split, from the
    independent reference model."""
    data = MockGPTDataset(cfg["seq_length"], cfg["vocab_size"], SEED + 1, EVAL_ITERS * 8)
    losses = []
    for k in range(EVAL_ITERS):
        rows = torch.from_numpy(np.stack([data[i] for i in range(k * 8, (k + 1) * 8)]).astype(np.int64))
        with torch.no_grad():
            losses.append(reference_loss({n: t.double() for n, t in params.items()}, rows[:, :-1], rows[:, 1:],
                                         cfg).item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ckpt"))
    return root, run_distributed(4, _world4, root)


def test_checkpoint_holds_full_canonical_tensors_written_by_several_ranks(saved):
    root, results = saved
    d = checkpoint.resolve(os.path.join(root, "gpt2"))
    meta = checkpoint.read_meta(d)
    params = results[0]["gpt2"]["saved"]
    assert meta["iteration"] == SAVE_AT and meta["consumed_samples"] == SAVE_AT * 8
    assert meta["plan"] == PLAN_A.to_dict() and meta["world_size"] == 4
    writers = {f.split("-")[0] for f in meta["files"] if f.endswith(".safetensors")}
    assert len(writers) == 4, writers  # every rank wrote a share, nobody wrote everything
    model_keys = sorted(k for k in meta["tensors"] if k.startswith("model/"))
    assert model_keys == sorted("model/" + n for n in params)  # each parameter exactly once
    for key, info in meta["tensors"].items():
        with safe_open(os.path.join(d, info["file"]), "pt") as f:
            t = f.get_tensor(key)
        name = key.split("/")[-1]
        if key.startswith("optim/step/"):
            assert t.shape == () and t.item() == SAVE_AT, key
            continue
        assert tuple(t.shape) == tuple(params[name].shape), key  # full and unpadded (vocab 61)
        if key.startswith("model/"):
            assert torch.equal(t, params[name]), key
    assert params["vocab.word_embeddings.weight"].shape == (61, 32)
    assert {k.split("/")[1] for k in meta["tensors"] if k.startswith("optim/")} == {"exp_avg", "exp_avg_sq", "step"}


def test_same_plan_resume_is_bit_exact_with_dropout_and_without(saved):
    _, results = saved
    last = results[3]
    for family in ("gpt2", "llama"):
        assert last[family]["same"]["losses"] == last[family]["uninterrupted"][SAVE_AT:], family
        for name, t in results[0][family]["final"].items():
            assert torch.equal(results[0][family]["same"]["params"][name], t), name
    assert last["gpt2"]["same_eval"]["losses"] == last["gpt2"]["uninterrupted"][SAVE_AT:]


def _check_other_plan(res, results, reference_eval):
    uninterrupted = results[3]["gpt2"]["uninterrupted"][SAVE_AT:]
    assert res["iteration"] == SAVE_AT and res["consumed"] == SAVE_AT * 8
    for name, t in results[0]["gpt2"]["saved"].items():  # resharding is exact
        assert torch.equal(res["params"][name], t), name
    assert max(abs(a - b) for a, b in zip(res["losses"], uninterrupted)) <= 1e-5, (res["losses"], uninterrupted)
    assert abs(res["eval"] - reference_eval) <= 1e-5, (res["eval"], reference_eval)


def test_other_plans_on_4_and_2_ranks_continue_the_run(saved):
    root, results = saved
    ref = _reference_eval(results[0]["gpt2"]["saved"], tiny_cfg("gpt2"))
    assert abs(results[3]["gpt2"]["same_eval"]["eval"] - ref) <= 1e-5
    _check_other_plan(results[3]["gpt2"]["b4"], results, ref)
    two = run_distributed(2, _world2, root)
    for res in two[1]:
        _check_other_plan(res, results, ref)
