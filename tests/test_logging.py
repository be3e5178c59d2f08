"""pretrain_gpt.py's logging: iteration lines in Megatron-LM's layout (read back as its tooling
reads them), the start-up summary, Weights & Biases (a stand-in module, and the real one offline
when installed), and one warning line each when wandb or tensorboard is missing."""
import json
import math
import re
import sys
import types
from datetime import datetime

import pytest

from tests.megatron_log import iteration_fields, lm_losses
from tests.pretrain_in_process import pretrain_in_process

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "64", "--make-vocab-size-divisible-by", "4", "--mock-data", "--global-batch-size", "4",
        "--lr", "1e-2", "--min-lr", "1e-3", "--lr-warmup-iters", "2", "--train-iters", "6"]


def _cosine_lr(it, lr=1e-2, min_lr=1e-3, warmup=2, decay=6):
    """The rate of the step that ends at iteration `it` (1-based), written from its definition."""
    step = it - 1
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / (decay - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


def test_iteration_lines_have_megatrons_fields_and_values(tmp_path):
    metrics = tmp_path / "m.jsonl"
    rc, out, err = pretrain_in_process(TINY + ["--metrics-json", str(metrics)])
    assert rc in (0, None), err
    fields = iteration_fields(out)
    assert sorted(fields) == list(range(1, 7))
    stamps = [datetime.strptime(fields[i]["timestamp"], "%Y-%m-%d %H:%M:%S") for i in range(1, 7)]
    assert stamps == sorted(stamps)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    for rec in records:
        f = fields[rec["iteration"]]
        assert f["train_iters"] == "6"
        assert int(f["consumed samples"]) == 4 * rec["iteration"]
        assert int(f["global batch size"]) == 4
        assert float(f["lm loss"]) == pytest.approx(rec["loss"], rel=1e-6)
        assert float(f["elapsed time per iteration (ms)"]) > 0
        assert f["loss scale"] == "1.0"
        assert int(f["number of skipped iterations"]) == 0 and int(f["number of nan iterations"]) == 0
        assert float(f["grad norm"]) == pytest.approx(rec["grad_norm"], abs=1e-3)
    # Megatron prints the rate the step used; the schedule is cosine after a linear warm-up
    assert float(fields[1]["learning rate"]) == pytest.approx(_cosine_lr(1), rel=1e-6)
    assert float(fields[5]["learning rate"]) == pytest.approx(_cosine_lr(5), rel=1e-6)
    losses = lm_losses(out)
    assert losses[6] < losses[1]


def test_start_summary_names_the_model_size_and_the_data():
    rc, out, _ = pretrain_in_process(TINY + ["--train-iters", "1"])
    assert rc in (0, None)
    # 2 GPT-2 layers of hidden 32: 12 h^2 + 13 h each, embeddings 64 x 32 + positions 16 x 32, final norm 2 h
    h = 32
    n = 2 * (12 * h * h + 13 * h) + 64 * h + 16 * h + 2 * h
    assert f"{n:,} parameters" in out
    assert "data: mock data" in out and "4 training samples" in out
    assert "toy model" not in out  # the model was named


def test_no_model_or_data_flags_says_it_trains_a_toy_model():
    rc, out, _ = pretrain_in_process(["--train-iters", "1"])
    assert rc in (0, None)
    notes = [line for line in out.splitlines() if "toy model" in line]
    assert len(notes) == 1 and "mock data" in notes[0]


def test_missing_wandb_and_tensorboard_are_one_warning_line_each(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    tb = tmp_path / "tb"
    rc, out, err = pretrain_in_process(TINY + ["--train-iters", "2", "--wandb-project", "p",
                                               "--tensorboard-dir", str(tb)])
    assert rc in (0, None), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([x for x in lines if "pip install wandb" in x]) == 1
    assert len([x for x in lines if "pip install tensorboard" in x]) == 1
    assert all(x.startswith("warning: ") for x in lines), lines
    assert len((tb / "scalars.jsonl").read_text().splitlines()) == 2
    assert len(lm_losses(out)) == 2  # training went on


class _FakeWandb(types.ModuleType):
    """Records what a real W&B run would be given."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kw):
        self.inits.append(kw)
        fake = self

        class Run:
            def log(self, data, step):
                fake.logged.append((step, dict(data)))

            def finish(self):
                fake.finished += 1
        return Run()


def test_wandb_run_gets_every_logged_iteration(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rc, out, err = pretrain_in_process(TINY + ["--wandb-project", "proj", "--wandb-exp-name", "exp",
                                               "--wandb-save-dir", str(tmp_path / "wb"), "--log-interval", "2",
                                               "--eval-interval", "3", "--eval-iters", "1"])
    assert rc in (0, None), err
    (kw,) = fake.inits
    assert kw["project"] == "proj" and kw["name"] == "exp" and kw["dir"] == str(tmp_path / "wb")
    assert kw["config"]["model"]["num_layers"] == 2 and kw["config"]["plan"]["global_bsz"] == 4
    train = {step: d["loss"] for step, d in fake.logged if "loss" in d}
    assert train == pytest.approx(lm_losses(out), rel=1e-6) and sorted(train) == [2, 4, 6]
    assert [step for step, d in fake.logged if "validation_loss" in d] == [3, 6]
    assert fake.finished == 1


def test_real_wandb_offline_writes_a_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    save = tmp_path / "wb"
    rc, out, err = pretrain_in_process(TINY + ["--train-iters", "3", "--wandb-project", "proj",
                                               "--wandb-exp-name", "tiny", "--wandb-save-dir", str(save)])
    assert rc in (0, None), err
    runs = [d for d in (save / "wandb").iterdir() if d.name.startswith("offline-run-")]
    assert len(runs) == 1
    (log,) = runs[0].glob("*.wandb")
    # The run log is protobuf records; each history item is its key, then its value as JSON text.
    logged = {float(v) for v in re.findall(rb"\x04loss\x82\x01.([-+0-9.eE]+)", log.read_bytes())}
    printed = sorted(lm_losses(out).values())
    assert len(logged) == 3 and sorted(logged) == pytest.approx(printed, rel=1e-6)
