"""bf16 training (FSDP units on bf16 parameters, replicated units on bf16 copies of fp32
master weights, fp32 gradient accumulation and reduction) tracks the float64 reference within
bf16 accuracy under every kind of unit."""
from megatron_galvatron.plan import uniform
from tests.dist_utils import run_distributed
from tests.equivalence import CLIP, LR, reference, rel, tiny_cfg
from tests.plan_runner import run_plans


def test_bf16_tracks_the_reference_under_ddp_zero_and_tp():
    cfg = tiny_cfg("llama")
    plans = [uniform(2, 4, dp_type="ddp", global_bsz=8, chunks=2),
             uniform(2, 4, dp_type="zero3", global_bsz=8, chunks=2),
             uniform(2, 4, tp=2, sp=True, checkpoint=True, global_bsz=8, chunks=1, pp_deg=1),
             uniform(2, 4, pp_deg=2, global_bsz=8, chunks=4)]
    results = run_distributed(2, run_plans, cfg, [p.to_dict() for p in plans], 3, LR, CLIP, ["--bf16"])
    for k, plan in enumerate(plans):
        res = results[1][k]
        ref_losses, ref_grads, _, ref_params = reference(cfg, res["params0"], plan.global_bsz, 3)
        for a, b in zip(res["losses"], ref_losses):
            assert abs(a - b) / b < 1e-2, (plan.describe(), res["losses"], ref_losses)
        for name, g in ref_grads.items():
            assert rel(res["grads"][name], g) < 0.1, (plan.describe(), name, rel(res["grads"][name], g))
        # Adam turns bf16 rounding of tiny gradient entries into whole +-lr steps, so parameters
        # drift by about a percent in three steps; a gradient folded or reduced wrongly is far off.
        for name, p in ref_params.items():
            assert rel(res["params"][name], p) < 3e-2, (plan.describe(), name)
