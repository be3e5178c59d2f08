"""Chunks that do not divide the global batch (as Hetu-Galvatron's search writes them) train:
micro-batches cut as torch.chunk cuts, of unequal sizes, through GPipe and 1F1B, equal the
single-process float32 reference over the whole batch (loss, every gradient, parameters after
the optimizer steps)."""
import pytest
import torch

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.micro_batches import micro_batch_sizes
from megatron_galvatron.plan import LayerStrategy, Plan, PlanError, VocabStrategy, uniform
from tests.equivalence import check_plans, tiny_cfg


def test_sizes_are_torch_chunk_sizes():
    for n in range(1, 40):
        for c in range(1, n + 1):
            assert micro_batch_sizes(n, c) == [len(t) for t in torch.arange(n).chunk(c)]
    assert micro_batch_sizes(1024, 41) == [25] * 40 + [24]  # a config Hetu-Galvatron ships
    assert micro_batch_sizes(10, 6) == [2] * 5               # fewer pieces than chunks
    # in units of the data-parallel degree: each piece still splits over the DP ranks
    assert micro_batch_sizes(10, 4, unit=2) == [4, 4, 2]


def test_galvatron_config_with_uneven_chunks_imports_and_validates():
    d = {"pp_deg": 2, "tp_sizes_enc": "1,1,2,2", "tp_consecutive_flags": "1,1,1,1", "dp_types_enc": "0,1,0,0",
         "global_bsz": 1024, "chunks": 41, "pp_division": "2,2", "pipeline_type": "pipedream_flush"}
    p = plan_mod.from_galvatron_dict(d, world_size=8).validate(world_size=8)
    assert p.chunks == 41 and p.batch_unit == 4
    assert p.micro_batch_sizes == [28] * 36 + [16] and p.num_micro_batches == 37
    assert p.global_micro_batch_size == 28
    assert "37 micro-batches of 28 (the last 16) (chunks=41)" in p.describe()
    # a batch the data-parallel degrees cannot share is refused, naming the fix
    with pytest.raises(PlanError, match="global_bsz=1022 .*multiple of 4"):
        plan_mod.from_galvatron_dict(dict(d, global_bsz=1022), world_size=8).validate(world_size=8)


def _world4_mixed(kind):
    """pp 2 x stage 2: TP-2 and DP-2 (ZeRO-3) layers, so micro-batches are cut in units of 2."""
    layers = [LayerStrategy(tp=1, dp_type="zero3"), LayerStrategy(tp=2, checkpoint=True),
              LayerStrategy(tp=2, tp_consec=True), LayerStrategy(tp=1, dp_type="zero2")]
    return Plan(world_size=4, pp_deg=2, pp_division=[2, 2], global_bsz=10, chunks=4, layers=layers,
                vocab=VocabStrategy(tp=2, dp_type="zero3"), pipeline_type=kind)


def test_world2_pipeline_uneven_chunks_match_reference():
    plans = [uniform(2, 4, pp_deg=2, global_bsz=10, chunks=4, pipeline_type=kind) for kind in ("gpipe", "1f1b")]
    assert plans[0].micro_batch_sizes == [3, 3, 3, 1]
    check_plans(2, tiny_cfg("gpt2"), plans, steps=2)


def test_world4_pipelines_uneven_chunks_match_reference():
    plans = [_world4_mixed("1f1b"), _world4_mixed("gpipe"),
             uniform(4, 4, pp_deg=4, global_bsz=10, chunks=4, pipeline_type="1f1b", pp_division=[1, 1, 1, 1])]
    assert [p.micro_batch_sizes for p in plans] == [[4, 4, 2], [4, 4, 2], [3, 3, 3, 1]]
    results = check_plans(4, tiny_cfg("llama"), plans, steps=2)
    for k, p in enumerate(plans):  # 1F1B's bound on live micro-batches holds with uneven ones too
        if p.pipeline_type == "1f1b":
            for rank in range(4):
                stage = rank // p.stage_world
                assert results[rank][k]["max_live"] <= min(p.num_micro_batches, p.pp_deg - stage)
