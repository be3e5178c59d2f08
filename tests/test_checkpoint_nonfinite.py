"""No checkpoint holds NaN or Inf: a save whose weights or optimizer state are not finite on any
rank is refused on every rank (one verdict, nobody left in a collective) before anything is
written, and so is a converter's write. (A loaded NaN is refused too: test_checkpoint_tamper.py,
case nan_weight.)"""
import os

import pytest
import torch

from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint.format import converted_meta
from megatron_galvatron.checkpoint.tensors import write_checkpoint
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import save_checkpoint, setup, train_step
from tests.dist_utils import run_distributed

FLAGS = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "8",
         "--vocab-size", "61", "--make-vocab-size-divisible-by", "1", "--global-batch-size", "4",
         "--train-iters", "6", "--mock-data", "--lr", "1e-3"]


def _written(root):
    return sorted(e for e in os.listdir(root) if e != ".lock") if os.path.isdir(root) else []


def _first_param(tr):
    name, p = next(iter(tr.stage.named_parameters()))
    return p.to_local() if hasattr(p, "to_local") else p


@pytest.mark.parametrize("where", ["weight", "exp_avg", "inf_weight"])
def test_nonfinite_state_is_not_saved(tmp_path, where):
    root = str(tmp_path / "ck")
    tr = setup(build_parser().parse_args(FLAGS + ["--save", root]))
    train_step(tr)
    p = _first_param(tr)
    with torch.no_grad():
        if where == "exp_avg":
            tr.optimizer.state[next(iter(tr.stage.parameters()))]["exp_avg"].view(-1)[0] = float("nan")
        else:
            p.view(-1)[0] = float("nan") if where == "weight" else float("inf")
    with pytest.raises(checkpoint.CheckpointError, match="holds NaN or Inf") as e:
        save_checkpoint(tr)
    assert ("optim/exp_avg/" if where == "exp_avg" else "model/") in str(e.value)
    assert _written(root) == []  # not even a temporary directory
    tr.save_lock.release()


def _diverged_rank_1(rank, world, root):
    tr = setup(build_parser().parse_args(FLAGS + ["--save", root]))
    train_step(tr)
    if rank == 1:
        with torch.no_grad():
            _first_param(tr).view(-1)[0] = float("nan")
    try:
        checkpoint.save(tr.checkpoint_state(), root)
    except checkpoint.CheckpointError as e:
        return str(e)
    return None


def test_one_diverged_rank_stops_the_save_on_every_rank(tmp_path):
    root = str(tmp_path / "ck")
    errors = run_distributed(2, _diverged_rank_1, root, timeout=300)
    assert errors[0] == errors[1] and "on rank 1" in errors[0], errors
    assert _written(root) == []


def test_converter_does_not_write_nonfinite_weights(tmp_path):
    root = str(tmp_path / "ck")
    items = iter([("model/a", torch.zeros(3)), ("model/b", torch.tensor([1.0, float("nan")]))])
    with pytest.raises(checkpoint.CheckpointError, match="model/b holds NaN or Inf"):
        write_checkpoint(root, converted_meta({"num_layers": 1}), items)
    assert _written(root) == []
