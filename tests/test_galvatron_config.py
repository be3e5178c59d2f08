"""A hand-written Hetu-Galvatron config trains exactly like the single-process reference.

tests/galvatron_config_example.json is in Galvatron's own format (comma-separated per-layer
strings): 2 pipeline stages of 2 layers, TP 1 and 2 (one strided), SDP and ZeRO-2 layers,
checkpointed layers, pipedream_flush, a TP-2 vocabulary under SDP.
"""
import os

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.plan import LayerStrategy, VocabStrategy
from tests.equivalence import check_plans, tiny_cfg

EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "galvatron_config_example.json")


def test_example_config_imports_as_written():
    p = plan_mod.load(EXAMPLE, world_size=4).validate(world_size=4)
    assert (p.pp_deg, p.pp_division, p.pipeline_type, p.global_bsz, p.chunks) == (2, [2, 2], "1f1b", 8, 2)
    assert p.layers == [LayerStrategy(tp=1, tp_consec=True, dp_type="zero3", checkpoint=False),
                        LayerStrategy(tp=2, tp_consec=True, dp_type="zero2", checkpoint=True),
                        LayerStrategy(tp=2, tp_consec=False, dp_type="zero3", checkpoint=True),
                        LayerStrategy(tp=1, tp_consec=True, dp_type="zero2", checkpoint=False)]
    assert p.vocab == VocabStrategy(tp=2, tp_consec=True, dp_type="zero3", sp=False)


def test_example_config_trains_like_the_reference():
    check_plans(4, tiny_cfg("gpt2"), [plan_mod.load(EXAMPLE, world_size=4)], steps=3)


# Galvatron's own Ulysses keys: use_sp=1 makes a layer's tp_sizes_enc entry its Ulysses group
# size, vsp=1 does the same for the vocabulary layers with vtp.
ULYSSES_CONFIG = {"pp_deg": 1, "tp_sizes_enc": "4,2,2,4", "tp_consecutive_flags": "1,0,1,1",
                  "dp_types_enc": "0,1,0,1", "use_sp": "1,1,0,1", "checkpoint": "0,1,0,0", "global_bsz": 8,
                  "chunks": 2, "pipeline_type": "gpipe", "default_dp_type": "zero2", "vtp": 4, "vsp": 1,
                  "embed_sdp": 0}


def test_ulysses_config_trains_like_the_reference():
    p = plan_mod.from_galvatron_dict(ULYSSES_CONFIG, world_size=4)
    assert [s.sp for s in p.layers] == ["ulysses", "ulysses", False, "ulysses"] and p.vocab.sp == "ulysses"
    check_plans(4, tiny_cfg("llama", num_query_groups=2), [p], steps=3)
