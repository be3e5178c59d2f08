"""--async-save in one process: the background checkpoint loads back into the same state, and a
write failing in the thread stops the run with one line when the save is published, leaving the
previous checkpoint in place."""
import pytest

from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint import tensors
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import publish_save, save_checkpoint, setup, train_step
from tests.rank_launch import TINY


def _trainer(root, *extra):
    args = build_parser().parse_args(TINY + ["--train-iters", "4", "--save", str(root), "--async-save", *extra])
    return setup(args)


def test_a_background_save_loads_back_into_the_same_state(tmp_path):
    tr = _trainer(tmp_path)
    train_step(tr)
    assert save_checkpoint(tr) is None and tr.pending_save is not None
    saved = gather_model(tr.stage)
    train_step(tr)  # the step changes the live weights while the files are written
    assert publish_save(tr) == str(tmp_path / "iter_0000001")
    back = _trainer(tmp_path, "--load", str(tmp_path))
    assert back.iteration == 1
    assert all((saved[k] == v).all() for k, v in gather_model(back.stage).items())


def test_a_failed_background_write_is_one_line_when_published(tmp_path, monkeypatch):
    tr = _trainer(tmp_path)
    train_step(tr)
    save_checkpoint(tr)
    publish_save(tr)

    def full_disk(path, t):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(tensors, "write_tensors", full_disk)
    train_step(tr)
    save_checkpoint(tr)
    with pytest.raises(checkpoint.CheckpointError) as e:
        publish_save(tr)
    assert str(e.value).startswith("cannot write ") and str(e.value).endswith(": No space left on device")
    assert checkpoint.latest_iteration(str(tmp_path)) == 1 and not (tmp_path / "iter_0000002").exists()
