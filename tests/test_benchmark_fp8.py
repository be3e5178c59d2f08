"""The +fp8 baselines (torchao float8, emulated on CPU) and the one-GPU ``plain`` kind: which
linears fp8 takes, how close its losses stay to high precision, FSDP2's fp8 all-gather on 2 gloo
ranks, and the one line a run without torchao gets."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from megatron_galvatron.benchmark.baselines import BaselineSpec, baseline_step, build_baseline
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig
from tests.dist_utils import run_distributed

f8 = pytest.importorskip("torchao.float8")
from torchao.float8.float8_linear import Float8Linear  # noqa: E402
from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "64", "--make-vocab-size-divisible-by", "4"]


def _cfg(family="gpt2", layers=2):
    kw = dict(num_query_groups=2) if family == "llama" else {}
    return GPTConfig(family=family, num_layers=layers, hidden_size=32, num_attention_heads=4, vocab_size=100,
                     seq_length=12, **kw)


def _batch(rows=4):
    return torch.randint(0, 100, (rows, 13), generator=torch.Generator().manual_seed(11))


def _losses(model, opt, autocast, tokens, steps):
    """Losses of ``steps`` optimizer steps on the same batch (so that they must fall)."""
    return [baseline_step(model, opt, tokens[:, :-1], tokens[:, 1:], autocast, CPU).item() for _ in range(steps)]


def _with_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr
    return opt


def test_fp8_names_parse():
    assert BaselineSpec.parse("fsdp2+compile+fp8") == BaselineSpec("fsdp2", compile=True, fp8=True)
    assert BaselineSpec.parse("plain+compile+fp8") == BaselineSpec("plain", compile=True, fp8=True)
    assert BaselineSpec.parse("ddp+ckpt+fp8", world=2) == BaselineSpec("ddp", checkpoint=True, fp8=True)
    with pytest.raises(UserError, match="not \\+ourmodel"):
        BaselineSpec.parse("fsdp2+ourmodel+fp8")


def test_plain_is_refused_on_two_ranks_in_one_line():
    assert BaselineSpec.parse("plain", world=1) == BaselineSpec("plain")
    with pytest.raises(UserError) as e:
        BaselineSpec.parse("plain+fp8", world=2)
    assert "\n" not in str(e.value) and "'plain+fp8'" in str(e.value) and "2 ranks" in str(e.value)


@pytest.mark.parametrize("family,per_block", [("gpt2", 4), ("llama", 5)])
def test_fp8_takes_exactly_the_block_linears(family, per_block):
    """qkv, proj, fc / gate + up, down in every block; the embedding and LM head stay as they were."""
    cfg = _cfg(family)
    model, _, _ = build_baseline(BaselineSpec.parse("plain+fp8"), cfg, CPU, seed=7, bf16=False)
    fp8 = [name for name, m in model.named_modules() if isinstance(m, Float8Linear)]
    assert len(fp8) == cfg.num_layers * per_block
    assert all(name.startswith("blocks.") for name in fp8)
    assert not [name for name, m in model.blocks.named_modules() if type(m) is nn.Linear]
    assert type(model.wte) is nn.Embedding
    if cfg.tie_embeddings:
        assert model.lm_head is None
    else:
        assert type(model.lm_head) is nn.Linear
    assert all(m.config.emulate and not m.config.enable_fsdp_float8_all_gather
               for m in model.modules() if isinstance(m, Float8Linear))


@pytest.mark.parametrize("name", ["plain+fp8", "plain+ckpt+fp8"])
def test_plain_fp8_steps_stay_near_high_precision(name):
    """fp8 moves the loss (the casts took effect) by less than 1e-2 of it, and training on one
    batch still lowers it."""
    cfg, tokens = _cfg("llama"), _batch()
    runs = {}
    for n in (name, name.replace("+fp8", "")):
        model, opt, autocast = build_baseline(BaselineSpec.parse(n), cfg, CPU, seed=7, bf16=False)
        runs[n] = _losses(model, _with_lr(opt, 1e-2), autocast, tokens, 4)
    got, ref = runs[name], runs[name.replace("+fp8", "")]
    assert all(math.isfinite(x) for x in got)
    assert 0 < abs(got[0] - ref[0]) < 1e-2 * ref[0]
    assert got == sorted(got, reverse=True) and got[-1] < got[0] - 0.05
    assert got[-1] == pytest.approx(ref[-1], rel=3e-2)


def test_compiled_fp8_step_matches_eager_fp8():
    cfg, tokens = _cfg("gpt2", layers=1), _batch(2)
    losses = []
    for name in ("plain+fp8", "plain+compile+fp8"):
        model, opt, autocast = build_baseline(BaselineSpec.parse(name), cfg, CPU, seed=7, bf16=False)
        losses.append(_losses(model, opt, autocast, tokens, 2))
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def _fsdp2_steps(rank, world, name):
    """Losses (mean over ranks) of 4 steps on one batch, each rank taking its half; for fp8 also
    whether every block weight is all-gathered in fp8 with a scale the optimizer hook computed."""
    model, opt, autocast = build_baseline(BaselineSpec.parse(name, world), _cfg("gpt2"), CPU, seed=7, bf16=False)
    mine = _batch()[rank * 2:(rank + 1) * 2]
    losses = []
    for loss in _losses(model, _with_lr(opt, 1e-2), autocast, mine, 4):
        t = torch.tensor(loss)
        torch.distributed.all_reduce(t)
        losses.append(t.item() / world)
    weights = [m.weight._local_tensor for m in model.modules() if isinstance(m, Float8Linear)]
    fp8_gather = bool(weights) and all(isinstance(w, WeightWithDynamicFloat8CastTensor)
                                       and w._precomputed_scale is not None for w in weights)
    return losses, len(weights), fp8_gather


def test_fsdp2_fp8_on_two_ranks_trains_near_high_precision():
    fp8 = run_distributed(2, _fsdp2_steps, "fsdp2+fp8")
    ref = run_distributed(2, _fsdp2_steps, "fsdp2")
    (got, count, fp8_gather), (want, ref_count, _) = fp8[0], ref[0]
    assert fp8[1] == fp8[0]
    assert count == 2 * 4 and ref_count == 0 and fp8_gather
    assert all(math.isfinite(x) for x in got)
    assert got == sorted(got, reverse=True) and got[-1] < got[0] - 0.05
    assert 0 < abs(got[0] - want[0]) < 1e-2 * want[0]
    assert got[-1] == pytest.approx(want[-1], rel=3e-2)


def test_importing_torchao_prints_nothing():
    code = "from megatron_galvatron.benchmark.float8 import import_float8; import_float8()"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr


def test_fp8_without_torchao_is_one_line():
    """ddp needs no torchao and passes; the fp8 name is refused before anything runs."""
    code = ("import runpy, sys; sys.modules['torchao'] = None\n"
            f"sys.argv = ['benchmark.py'] + {TINY + ['--baselines', 'ddp,fsdp2+compile+fp8']!r}\n"
            "runpy.run_path('tools/benchmark.py', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["benchmark.py: error: fp8 baselines need torchao "
                                             "(pip install torchao==0.18.0)"]


def test_plain_fp8_through_the_cli(tmp_path):
    """One process, no launcher: the plain kind's world."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py")] + TINY + [
        "--baselines", "plain+fp8", "--baseline-micro-batches", "2", "--iters", "2", "--warmup", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    (res,) = json.load(open(out))["results"]
    assert res["name"] == "plain+fp8" and res["status"] == "ok" and len(res["times"]) == 2


def test_uniform_plan_keeps_the_skipped_ends_bf16():
    from megatron_galvatron.benchmark.plans import parse_global_plan
    plan = parse_global_plan("tp=1,gbs=16,chunks=4,fp8=tensorwise,fp8skip=2:3", 1, 10)
    assert [s.fp8 for s in plan.layers] == [None] * 2 + ["tensorwise"] * 5 + [None] * 3
    assert not parse_global_plan("tp=1,gbs=8", 1, 4).has_fp8
    for bad, says in (("fp8=tensorwise,fp8skip=1", "fp8skip takes F:L"), ("fp8=tensorwise,fp8skip=a:1", "'a'"),
                      ("fp8skip=1:1", "need --fp8"), ("fp8=tensorwise,fp8skip=5:5", "leave none of the 10")):
        with pytest.raises(UserError, match=says) as e:
            parse_global_plan(bad, 1, 10)
        assert str(e.value).startswith(f"--global-plans {bad!r}") and "\n" not in str(e.value)
