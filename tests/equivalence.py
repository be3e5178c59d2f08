"""Compare distributed training under plans with the independent reference model."""
import numpy as np
import torch

from megatron_galvatron.data.mock_dataset import MockGPTDataset
from tests.dist_utils import run_distributed
from tests.plan_runner import ADAM_EPS, run_plans
from tests.reference_model import reference_train

SEED = 7
LR, CLIP = 1e-3, 1.0
# A float8 cast rounds to one of two neighbouring values; a float32 difference of summation order
# can tip a value lying next to the midpoint, and Adam scales any change of a near-zero gradient
# up to +-lr. Above the gradients' rounding a larger eps keeps the update linear in the gradient,
# so the comparison stays about the parallel math (as ADAM_EPS does for float32 noise).
FP8_ADAM_EPS = 1e-4
# Such a tipped cast moves its matmul's result by one float8 step (1/8 of a value in e4m3): in a
# gradient of these sizes up to ~1e-3 of its norm. Everything else agrees to float32 rounding
# (losses within 1e-7, untipped gradients within 1e-6), so the loss keeps the core tolerance.
FP8_GRAD_TOL = 2e-3


def tiny_cfg(family="gpt2", **kw):
    cfg = dict(family=family, num_layers=4, hidden_size=32, num_attention_heads=4 if family == "gpt2" else 8,
               num_query_groups=4, ffn_hidden_size=64, seq_length=8, vocab_size=61,
               divisible_by=4, norm_eps=1e-5, rope_theta=10000.0)
    cfg.update(kw)
    return cfg


def reference(cfg, params0, global_bsz, steps, chunks=1, fp8=None, eps=ADAM_EPS):
    data = MockGPTDataset(cfg["seq_length"], cfg["vocab_size"], SEED, steps * global_bsz)
    batches = []
    for s in range(steps):
        rows = torch.from_numpy(np.stack([data[i] for i in range(s * global_bsz, (s + 1) * global_bsz)]).astype(np.int64))
        batches.append((rows[:, :-1], rows[:, 1:]))
    return reference_train({k: v.double() for k, v in params0.items()}, batches, cfg, steps, LR, 0.1, CLIP,
                           eps=eps, chunks=chunks, fp8=fp8)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check_plans(world, cfg, plans, steps=3, worker=run_plans):
    """Run every plan on `world` ranks (one spawn) and assert each matches the reference; `worker`:
    run_plans, or one that reports more beside what run_plans does (returned per rank and plan)."""
    eps = FP8_ADAM_EPS if any(p.has_fp8 for p in plans) else ADAM_EPS
    results = run_distributed(world, worker, cfg, [p.to_dict() for p in plans], steps, LR, CLIP,
                              ["--adam-eps", str(eps)])
    failures = []
    for k, plan in enumerate(plans):
        last = world - 1
        res = results[last][k]
        # float8 scales are taken per micro-batch, so such plans are checked micro-batch by micro-batch
        chunks, fp8 = (plan.chunks, [s.fp8 for s in plan.layers]) if plan.has_fp8 else (1, None)
        ref_losses, ref_grads, ref_norms, ref_params = reference(cfg, res["params0"], plan.global_bsz, steps,
                                                                 chunks, fp8, eps)
        for name, t in results[0][k]["params0"].items():  # same initial weights under every plan
            assert torch.equal(t, results[0][0]["params0"][name]), f"{plan.describe()}\ninit differs: {name}"
        tol = FP8_GRAD_TOL if plan.has_fp8 else 1e-4
        problems = []
        for s, (a, b) in enumerate(zip(results[0][k]["grad_norms"], ref_norms)):
            if abs(a - b) / abs(b) > tol:
                problems.append(f"grad norm step {s}: {a} vs {b}")
        for s, (a, b) in enumerate(zip(res["losses"], ref_losses)):
            if abs(a - b) / abs(b) > 1e-5:
                problems.append(f"loss step {s}: {a} vs {b}")
        for name, g in ref_grads.items():
            got = res["grads"].get(name)
            if got is None or rel(got, g) > tol:
                problems.append(f"grad {name}: rel err {None if got is None else rel(got, g)}")
        for name, p in ref_params.items():
            if rel(res["params"][name], p) > tol:
                problems.append(f"param {name}: rel err {rel(res['params'][name], p)}")
        for r in range(world):
            if results[r][k]["fsdp_stream_sets"] > 1:
                problems.append(f"rank {r}: its FSDP units use {results[r][k]['fsdp_stream_sets']} sets of streams")
        if problems:
            failures.append(plan.describe() + "\n  " + "\n  ".join(problems[:8]))
    assert not failures, "\n\n".join(failures)
    return results
