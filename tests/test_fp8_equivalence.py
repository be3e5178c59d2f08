"""Float8 layers (torchao, emulated on CPU) under every layout match the independent reference
computing the same float8 casts on the whole micro-batch in one process: same loss, every
gradient and the parameters after three AdamW steps, with float8 and bf16 layers mixed."""
import dataclasses

import pytest

from megatron_galvatron.plan import LayerStrategy as L
from megatron_galvatron.plan import VocabStrategy, uniform
from tests.equivalence import check_plans, tiny_cfg

pytest.importorskip("torchao")


def mixed(world, layers, pp=1, chunks=2, vocab=None, pipeline="1f1b", global_bsz=8):
    p = uniform(world, len(layers), pp_deg=pp, global_bsz=global_bsz, chunks=chunks, pipeline_type=pipeline)
    return dataclasses.replace(p, layers=list(layers), vocab=vocab or VocabStrategy())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fp8_two_ranks_tp_dp_zero(family):
    check_plans(2, tiny_cfg(family), [
        mixed(2, [L(tp=2, fp8="tensorwise"), L(tp=1, dp_type="zero3", fp8="tensorwise"),
                  L(tp=2, sp=True, fp8="rowwise"), L(tp=1, fp8="rowwise", checkpoint=True)]),
        mixed(2, [L(tp=1, dp_type="zero2", fp8="rowwise"), L(tp=2), L(tp=2, sp=True, fp8="tensorwise", checkpoint=True),
                  L(tp=1, dp_type="ddp", fp8="tensorwise")], vocab=VocabStrategy(tp=2)),
    ])


def test_fp8_four_ranks_strided_tp_pipelines():
    check_plans(4, tiny_cfg("llama"), [
        mixed(4, [L(tp=2, tp_consec=False, dp_type="zero3", fp8="tensorwise"), L(tp=4, sp=True, fp8="rowwise"),
                  L(tp=1, dp_type="zero2", fp8="rowwise", checkpoint=True), L(tp=2, fp8="tensorwise")],
              chunks=1),
        mixed(4, [L(tp=2, fp8="tensorwise"), L(tp=2, tp_consec=False, fp8="rowwise", checkpoint=True),
                  L(tp=1, dp_type="zero3", fp8="tensorwise"), L(tp=2, sp=True)],
              pp=2, chunks=4, pipeline="1f1b", vocab=VocabStrategy(tp=2)),
    ])


def test_fp8_eight_ranks_gpipe_mixed():
    check_plans(8, tiny_cfg("gpt2"), [
        mixed(8, [L(tp=4, sp=True, fp8="tensorwise"), L(tp=2, tp_consec=False, dp_type="zero3", fp8="rowwise"),
                  L(tp=1, dp_type="zero2", fp8="tensorwise", checkpoint=True), L(tp=4)],
              pp=2, chunks=2, pipeline="gpipe", vocab=VocabStrategy(tp=2)),
    ])


def test_fp8_compiled_layers_with_scale_reductions():
    """Compiled float8 layers whose casts reduce their amax across ranks (tp 2; zero3 over dp 2)."""
    plan = dataclasses.replace(uniform(2, 2, global_bsz=8, chunks=2), compile=True,
                               layers=[L(tp=2, fp8="tensorwise"), L(tp=1, dp_type="zero3", fp8="rowwise",
                                                                    checkpoint=True)])
    check_plans(2, tiny_cfg("llama", num_layers=2), [plan])
