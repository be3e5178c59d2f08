"""A step whose gradients hold a NaN on one pipeline stage (or one ZeRO-3 rank) only is skipped on every rank: no
weight, no AdamW moment and no step count changes, the iteration and the `skipped` metric count
it, and more than --max-skipped-steps such steps in a row stop the run with one line."""
import math

import pytest
import torch

from megatron_galvatron.data_parallel.grad_sync import local_grad
from megatron_galvatron.errors import UserError
from megatron_galvatron.training import train as train_mod
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.nonfinite import SkippedSteps, step_if_finite
from tests.dist_utils import run_distributed
from tests.rank_launch import TINY


@pytest.mark.parametrize("kind", ["fused", "foreach"])
def test_a_skipped_optimizer_step_changes_nothing(kind):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 3))
    opt = torch.optim.AdamW([w], lr=0.1, **{kind: True})
    w.grad = torch.randn(6, 3)
    step_if_finite(opt, torch.tensor(True))  # a first real step creates the moments
    before = (w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()})
    w.grad = torch.full((6, 3), math.nan)
    step_if_finite(opt, torch.tensor(False))
    assert torch.equal(w.detach(), before[0])
    assert all(torch.equal(opt.state[w][k], v) for k, v in before[1].items())
    w.grad = torch.ones(6, 3)
    step_if_finite(opt, torch.tensor(True))
    assert float(opt.state[w]["step"]) == 2 and not torch.equal(w.detach(), before[0])


def test_skipped_steps_counts_per_interval_and_stops_after_too_many_in_a_row():
    s = SkippedSteps(torch.device("cpu"), limit=2)
    for bad in (1, 0, 1, 1):
        s.add(torch.tensor(bool(bad)))
    assert s.read(4) == 3  # a run of 2 is allowed
    s.add(torch.tensor(True))  # the run of 2 goes on into the next interval: 3 in a row
    with pytest.raises(UserError, match=r"^3 steps in a row up to iteration 5 had a NaN/Inf gradient norm"):
        s.read(5)
    never = SkippedSteps(torch.device("cpu"), limit=None)
    for _ in range(5):
        never.add(torch.tensor(True))
    assert never.read(5) == 5


PP2 = ["--pp-deg", "2", "--micro-batch-size", "2"]


def _run(bad_iterations, max_skipped, plan=PP2, fused=False):
    """Train 8 steps with a NaN put into one gradient of rank 0 (under pp 2: the first stage) at
    the given iterations; each step's (iteration, skipped, any parameter changed) on this rank."""
    args = build_parser().parse_args(TINY + ["--train-iters", "8", "--max-skipped-steps", str(max_skipped), *plan])
    tr = train_mod.setup(args)
    if fused:  # what a GPU run builds; the CPU default is foreach
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in tr.optimizer.param_groups]
        tr.optimizer = torch.optim.AdamW(groups, lr=args.lr, eps=args.adam_eps, fused=True)
    sync = tr.model.finish_grad_sync

    def poisoned_sync():
        sync()
        if tr.ps.rank == 0 and tr.iteration + 1 in bad_iterations:
            local_grad(next(tr.stage.parameters())).view(-1)[0] = math.nan

    tr.model.finish_grad_sync = poisoned_sync
    step, trace = train_mod.train_step, []

    def local(t):
        return t.detach().to_local() if hasattr(t, "to_local") else t.detach()

    def observed_step(tr):
        before = [local(p).clone() for p in tr.stage.parameters()]
        moments = [local(v).clone() for s in tr.optimizer.state.values() for v in s.values()]
        stats = step(tr)
        after = [local(v) for s in tr.optimizer.state.values() for v in s.values()]
        changed = any(not torch.equal(a, local(p)) for a, p in zip(before, tr.stage.parameters())) or \
            len(moments) != len(after) or any(not torch.equal(a, b) for a, b in zip(moments, after))
        trace.append((tr.iteration, bool(stats.skipped), changed))
        return stats

    train_mod.train_step = observed_step
    error = None
    try:
        train_mod.train(tr)
    except UserError as e:
        error = str(e)
    finally:
        train_mod.train_step = step
    return {"trace": trace, "skipped": [(r["iteration"], r["skipped"]) for r in tr.log], "error": error,
            "iteration": tr.iteration, "dtensors": any(hasattr(p, "device_mesh") for p in tr.stage.parameters())}


def _worker(rank, world):
    return [_run({3, 5}, 1), _run({3, 4}, 1), _run({3}, 1, ["--default-dp-type", "zero3"], fused=True)]


def test_nan_on_one_stage_is_skipped_on_every_rank_and_too_many_in_a_row_stop_the_run():
    ranks = run_distributed(2, _worker)
    for apart, in_a_row, sharded in ranks:
        assert apart["error"] is None and apart["iteration"] == 8
        assert apart["trace"] == [(i, i in (3, 5), i not in (3, 5)) for i in range(1, 9)]
        assert apart["skipped"] == [(i, int(i in (3, 5))) for i in range(1, 9)]
        assert in_a_row["trace"] == [(i, i in (3, 4), i not in (3, 4)) for i in range(1, 5)]
        assert in_a_row["error"].startswith("2 steps in a row up to iteration 4 had a NaN/Inf gradient norm "
                                            "(skipped), more than --max-skipped-steps 1")
        # ZeRO-3 over dp 2 with the fused AdamW of GPU runs: the skip reaches the sharded (DTensor)
        # parameters through the kernel's found_inf, and the NaN on rank 0 stops rank 1's step too
        assert sharded["dtensors"] and sharded["error"] is None and sharded["trace"] == [(i, i == 3, i != 3) for i in range(1, 9)]
