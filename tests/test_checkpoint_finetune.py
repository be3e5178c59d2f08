"""--finetune takes only the weights of a checkpoint; --no-load-optim leaves out its optimizer."""
import torch

from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import save_checkpoint, setup, train_step

FLAGS = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "8",
         "--vocab-size", "61", "--make-vocab-size-divisible-by", "1", "--global-batch-size", "4",
         "--train-iters", "6", "--mock-data", "--lr", "1e-3"]


def _trainer(extra):
    return setup(build_parser().parse_args(FLAGS + extra))


def test_finetune_and_no_load_optim(tmp_path):
    tr = _trainer(["--save", str(tmp_path / "ck")])
    for _ in range(3):
        train_step(tr)
    save_checkpoint(tr)
    saved = gather_model(tr.stage)

    ft = _trainer(["--load", str(tmp_path / "ck"), "--finetune"])
    assert (ft.iteration, ft.consumed_samples) == (0, 0)
    assert not ft.optimizer.state  # a fresh optimizer
    for name, t in gather_model(ft.stage).items():
        assert torch.equal(t, saved[name]), name

    no_opt = _trainer(["--load", str(tmp_path / "ck"), "--no-load-optim"])
    assert (no_opt.iteration, no_opt.consumed_samples) == (3, 12)
    assert not no_opt.optimizer.state
    resumed = _trainer(["--load", str(tmp_path / "ck")])
    assert resumed.iteration == 3 and len(resumed.optimizer.state) == len(list(resumed.stage.parameters()))
