"""Distributed training under a plan equals the single-process reference (CPU, gloo, float32):
loss, every gradient (gathered to full shape, after clipping) and the parameters after three
AdamW steps. One process group per world size runs many plans to keep the suite fast."""
import pytest

from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy, uniform
from tests.equivalence import check_plans, tiny_cfg


def U(world, **kw):
    kw.setdefault("global_bsz", 8)
    kw.setdefault("chunks", 2)
    return uniform(world, 4, **kw)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_world2_core_strategies(family):
    check_plans(2, tiny_cfg(family), [
        U(2, tp=2), U(2, dp_type="ddp"), U(2, dp_type="zero2"), U(2, dp_type="zero3"),
        U(2, tp=2, sp=True), U(2, tp=2, sp=True, checkpoint=True, chunks=4),
    ])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_world4_tp_dp_zero_sp_checkpoint(family):
    check_plans(4, tiny_cfg(family), [
        U(4, tp=4),                                                   # TP only
        U(4, dp_type="ddp", chunks=1),                                # DP only
        U(4, dp_type="zero2"),
        U(4, dp_type="zero3", checkpoint=True),
        U(4, tp=2, dp_type="ddp"),                                    # TP x DP, consecutive
        U(4, tp=2, tp_consec=False, dp_type="zero3"),                 # TP x ZeRO-3, strided
        U(4, tp=2, sp=True, dp_type="zero2", checkpoint=True),
        U(4, tp=2, tp_consec=False, sp=True, dp_type="ddp"),
    ])


def test_world4_heterogeneous_layers_in_one_stage():
    layers = [LayerStrategy(tp=1, dp_type="zero3"), LayerStrategy(tp=2, tp_consec=False, dp_type="ddp", sp=True),
              LayerStrategy(tp=4, dp_type="zero2", checkpoint=True), LayerStrategy(tp=2, dp_type="zero3")]
    plan = Plan(world_size=4, pp_deg=1, pp_division=[4], global_bsz=8, chunks=2, layers=layers,
                vocab=VocabStrategy(tp=2, tp_consec=False, dp_type="zero3", sp=True))
    check_plans(4, tiny_cfg("llama"), [plan])


def test_world2_compiled_layers():
    """A plan that says compile (torch.compile of every layer) trains like the reference."""
    plans = [U(2, dp_type="zero3"), U(2, tp=2, sp=True)]
    for p in plans:
        p.compile = True
    check_plans(2, tiny_cfg("llama"), plans)
