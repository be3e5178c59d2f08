"""Pipelines (GPipe and 1F1B) and random heterogeneous plans equal the single-process
reference; 1F1B keeps at most pp - stage micro-batches of activations alive per stage."""
import random

import pytest

from megatron_galvatron.plan import uniform
from tests.equivalence import check_plans, tiny_cfg
from tests.random_plans import random_plan


def test_world4_pipelines_both_schedules_even_and_uneven():
    plans = []
    for kind in ("gpipe", "1f1b"):
        plans += [
            uniform(4, 4, pp_deg=2, tp=2, dp_type="zero3", global_bsz=8, chunks=4, pipeline_type=kind),
            uniform(4, 4, pp_deg=2, dp_type="ddp", global_bsz=8, chunks=1, pipeline_type=kind,
                    pp_division=[1, 3]),
            uniform(4, 4, pp_deg=4, global_bsz=8, chunks=8, pipeline_type=kind, pp_division=[1, 1, 1, 1]),
        ]
    plans.append(uniform(4, 4, pp_deg=4, global_bsz=6, chunks=3, pipeline_type="1f1b"))
    results = check_plans(4, tiny_cfg("gpt2"), plans)
    # 1F1B bound on live micro-batches, counted by the schedule on each stage's ranks
    for k, plan in enumerate(plans):
        for rank in range(4):
            stage = rank // plan.stage_world
            live = results[rank][k]["max_live"]
            if plan.pipeline_type == "1f1b":
                assert live <= min(plan.chunks, plan.pp_deg - stage), (plan.describe(), rank, live)
            else:
                assert live == plan.chunks


def test_world8_pipeline_llama_untied_head():
    plans = [uniform(8, 4, pp_deg=2, tp=2, sp=True, dp_type="zero2", global_bsz=8, chunks=2),
             uniform(8, 4, pp_deg=4, tp=2, tp_consec=False, checkpoint=True, global_bsz=8, chunks=4,
                     pipeline_type="gpipe")]
    check_plans(8, tiny_cfg("llama"), plans)


@pytest.mark.parametrize("world,count,seed", [(4, 14, 11), (8, 12, 12)])
def test_random_heterogeneous_plans(world, count, seed):
    rng = random.Random(seed)
    cfg = tiny_cfg(rng.choice(["gpt2", "llama"]))
    plans = [random_plan(rng, world, cfg["num_layers"], cfg["num_attention_heads"], cfg["num_query_groups"],
                         cfg["seq_length"]) for _ in range(count)]
    check_plans(world, cfg, plans)
