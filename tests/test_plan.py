"""The plan object: round trips, validation messages, Hetu-Galvatron import and GLOBAL-mode flags.

Every invalid input must raise PlanError with one line that names the offending field and
says how to fix it, so that the CLIs can print it without a traceback.
"""
import copy
import json

import pytest

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.model.config import GPTConfig, config_from_args
from megatron_galvatron.plan import LayerStrategy, Plan, PlanError, VocabStrategy
from megatron_galvatron.training import arguments

FIX_WORDS = ("use ", "make ", "set ", "remove", "give ", "fix ", "launch ", "search ", "pass ", "add ")


def mixed_plan() -> Plan:
    layers = [LayerStrategy(tp=1, dp_type="zero3", checkpoint=True),
              LayerStrategy(tp=2, tp_consec=False, dp_type="ddp", sp=True),
              LayerStrategy(tp=4, dp_type="zero2"),
              LayerStrategy(tp=2, dp_type="zero3", sp=True, checkpoint=True),
              LayerStrategy(tp=1, dp_type="ddp"),
              LayerStrategy(tp=4, tp_consec=False, dp_type="zero2", checkpoint=True)]
    return Plan(world_size=8, pp_deg=2, pp_division=[2, 4], global_bsz=16, chunks=4, layers=layers,
                vocab=VocabStrategy(tp=2, tp_consec=False, dp_type="zero3", sp=True), pipeline_type="gpipe",
                predicted={"iter_time_s": 0.5, "peak_mem_gb": [3.0, 2.5]})


def plan_error(fn, *fragments, fix=True) -> str:
    with pytest.raises(PlanError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip(), repr(msg)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    if fix:
        assert any(w in msg for w in FIX_WORDS), f"no fix in {msg!r}"
    return msg


def edited(**changes) -> dict:
    d = copy.deepcopy(mixed_plan().to_dict())
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    return d


# ----------------------------------------------------------------------------- round trips

def test_to_dict_from_dict_round_trip():
    p = mixed_plan().validate()
    d = p.to_dict()
    assert d["format"] == plan_mod.FORMAT
    json.dumps(d)  # plain JSON types only
    q = Plan.from_dict(json.loads(json.dumps(d)))
    assert q == p
    assert q.to_dict() == d


def test_save_load_round_trip(tmp_path):
    p = mixed_plan()
    path = tmp_path / "plan.json"
    p.save(str(path))
    assert plan_mod.load(str(path)) == p
    assert [f.name for f in tmp_path.iterdir()] == ["plan.json"]  # no temporary left behind
    assert json.loads(path.read_text())["layers"][1] == {"tp": 2, "tp_consec": False, "dp_type": "ddp", "sp": True,
                                                          "checkpoint": False}


def test_derived_facts():
    p = mixed_plan()
    assert p.num_layers == 6 and p.stage_world == 4 and p.global_micro_batch_size == 4
    assert [p.stage_of_layer(i) for i in range(6)] == [0, 0, 1, 1, 1, 1]
    assert list(p.stage_layers(0)) == [0, 1] and list(p.stage_layers(1)) == [2, 3, 4, 5]
    assert plan_mod.even_division(10, 4) == [2, 2, 3, 3] and sum(plan_mod.even_division(7, 3)) == 7


def test_flags_written_as_zero_one_read_as_booleans():
    d = edited(layers=[{"tp": 1, "tp_consec": 0, "sp": 0, "checkpoint": 1}] * 6)
    layer = Plan.from_dict(d).layers[0]
    assert layer.checkpoint is True and layer.tp_consec is False and layer.sp is False


def test_describe_lists_every_layer_and_vocab():
    text = mixed_plan().describe()
    lines = text.splitlines()
    assert "world 8 = pp 2 x stage 4" in lines[0] and "gpipe" in lines[0] and "pp_division [2, 4]" in lines[0]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:] if not ln.startswith("predicted")}
    assert rows["vocab"] == ["vocab", "0/1", "2", "0", "2", "zero3", "1", "-"]
    # layer, stage, tp, consec, dp, dp_type, sp, checkpoint
    assert rows["0"] == ["0", "0", "1", "1", "4", "zero3", "0", "1"]
    assert rows["1"] == ["1", "0", "2", "0", "2", "ddp", "1", "0"]
    assert rows["5"] == ["5", "1", "4", "0", "1", "zero2", "0", "1"]
    assert len(rows) == 7
    assert lines[-1].startswith("predicted: ") and "iter_time_s=0.5" in lines[-1]


# ----------------------------------------------------------------------------- validation

def test_valid_plan_passes_with_model_and_world():
    mixed_plan().validate(GPTConfig(family="llama", num_layers=6, hidden_size=64, num_attention_heads=8,
                                    num_query_groups=4, ffn_hidden_size=64), world_size=8)


def test_tp_not_dividing_stage_size():
    p = mixed_plan()
    p.layers[3] = LayerStrategy(tp=3)
    plan_error(p.validate, "layers[3].tp=3", "stage size 4")
    p = mixed_plan()
    p.vocab = VocabStrategy(tp=8)
    plan_error(p.validate, "vocab.tp=8")


@pytest.mark.parametrize("shape,field", [
    (GPTConfig(num_layers=6, hidden_size=48, num_attention_heads=6, ffn_hidden_size=64), "--num-attention-heads=6"),
    (GPTConfig(family="llama", num_layers=6, hidden_size=64, num_attention_heads=8, num_query_groups=2,
               ffn_hidden_size=64), "--num-query-groups=2"),
    (GPTConfig(num_layers=6, hidden_size=64, num_attention_heads=8, ffn_hidden_size=66), "--ffn-hidden-size=66"),
])
def test_tp_not_dividing_model_dimensions(shape, field):
    plan_error(lambda: mixed_plan().validate(shape), "layers[2].tp=4", field)


def test_pp_division_must_match_layers_and_num_layers():
    plan_error(lambda: Plan.from_dict(edited(pp_division=[2, 3])).validate(), "pp_division=[2, 3]", "sums to 5")
    plan_error(lambda: Plan.from_dict(edited(pp_division=[6])).validate(), "pp_division=[6]")
    plan_error(lambda: Plan.from_dict(edited(pp_division=[0, 6])).validate(), "pp_division entry", fix=False)
    shape = GPTConfig(num_layers=4, hidden_size=64, num_attention_heads=8)
    plan_error(lambda: mixed_plan().validate(shape), "--num-layers is 4")


def test_world_size_must_match_launch():
    plan_error(lambda: mixed_plan().validate(world_size=4), "world_size=8", "4 processes")
    plan_error(lambda: Plan.from_dict(edited(pp_deg=3, pp_division=[2, 2, 2])).validate(), "pp_deg=3")


def test_global_batch_divisibility():
    plan_error(lambda: Plan.from_dict(edited(global_bsz=18)).validate(), "global_bsz=18", "chunks=4")
    # 8 in 4 chunks would be 2 samples per micro-batch, but layer 0 has dp 4: cut as torch.chunk
    # cuts in units of 4 samples (see micro_batches), that is 2 micro-batches of 4
    p = Plan.from_dict(edited(global_bsz=8)).validate()
    assert p.micro_batch_sizes == [4, 4] and p.num_micro_batches == 2
    p = mixed_plan()
    p.vocab = VocabStrategy(tp=1)
    p.global_bsz = 6  # not a multiple of 4, the DP degrees' least common multiple
    plan_error(p.validate, "global_bsz=6", "multiple of 4")


def test_unknown_keys():
    plan_error(lambda: Plan.from_dict(edited(vtp=2)), "unknown plan key", "vtp")
    d = edited()
    d["layers"][4]["use_sp"] = 1
    plan_error(lambda: Plan.from_dict(d), "layers[4]", "use_sp")
    d = edited()
    d["vocab"]["checkpoint"] = True
    plan_error(lambda: Plan.from_dict(d), "vocab", "checkpoint")


def test_missing_and_malformed_fields():
    plan_error(lambda: Plan.from_dict(edited(chunks=None)), "'chunks'", fix=False)
    plan_error(lambda: Plan.from_dict(edited(format="other/2")), "format")
    plan_error(lambda: Plan.from_dict([1, 2]), "JSON object", fix=False)


@pytest.mark.parametrize("changes,field", [
    (dict(world_size="8"), "world_size"),
    (dict(pp_deg=2.0), "pp_deg"),
    (dict(global_bsz=True), "global_bsz"),
    (dict(chunks=None, ), "chunks"),
    (dict(pp_division="2,4"), "pp_division"),
    (dict(pp_division=[2, "4"]), "pp_division"),
    (dict(layers={"tp": 1}), "layers"),
    (dict(layers=[]), "layers"),
    (dict(vocab=[2]), "vocab"),
    (dict(pipeline_type="interleaved"), "pipeline_type"),
    (dict(predicted=[1, 2]), "predicted"),
])
def test_wrong_types(changes, field):
    plan_error(lambda: Plan.from_dict(edited(**changes)).validate(), field, fix=False)


@pytest.mark.parametrize("layer,field", [
    ({"tp": "2"}, "layers[0].tp"),
    ({"tp": 0}, "layers[0].tp"),
    ({"dp_type": "zero1"}, "layers[0].dp_type"),
    ({"sp": "yes"}, "layers[0].sp"),
    ({"tp_consec": 2}, "layers[0].tp_consec"),
    ({"checkpoint": None}, "layers[0].checkpoint"),
    (None, "layers[0]"),
])
def test_wrong_layer_field_types(layer, field):
    d = edited(layers=[layer] + [{"tp": 1}] * 5)
    plan_error(lambda: Plan.from_dict(d).validate(), field, fix=False)


def test_load_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "megatron_galvatron.plan/1", "world_size": 8,,}')
    plan_error(lambda: plan_mod.load(str(bad)), str(bad), "not valid JSON", "line 1")
    plan_error(lambda: plan_mod.load(str(tmp_path / "none.json")), "none.json", "does not exist", fix=False)


# ----------------------------------------------------------------------------- Hetu-Galvatron import

GALVATRON = {
    "pp_deg": 2, "tp_sizes_enc": "1,2,4,2", "tp_consecutive_flags": "1,0,1,0", "dp_types_enc": "0,1,0,1",
    "use_sp": "0,0,0,0", "checkpoint": "1,0,0,1", "global_bsz": 16, "chunks": 4, "pp_division": "1,3",
    "pipeline_type": "pipedream_flush", "default_dp_type": "zero2", "vtp": 4, "vsp": 0, "embed_sdp": 1,
}


def test_galvatron_every_key_maps_to_its_field():
    p = plan_mod.from_galvatron_dict(GALVATRON, world_size=8).validate(world_size=8)
    assert p.world_size == 8 and p.pp_deg == 2 and p.pp_division == [1, 3]
    assert p.global_bsz == 16 and p.chunks == 4 and p.pipeline_type == "1f1b"
    assert [s.tp for s in p.layers] == [1, 2, 4, 2]
    assert [s.tp_consec for s in p.layers] == [True, False, True, False]
    assert [s.dp_type for s in p.layers] == ["zero2", "zero3", "zero2", "zero3"]  # 0 = default_dp_type, 1 = SDP
    assert [s.checkpoint for s in p.layers] == [True, False, False, True]
    assert not any(s.sp for s in p.layers)
    assert p.vocab == VocabStrategy(tp=4, tp_consec=True, dp_type="zero3", sp=False)


@pytest.mark.parametrize("key,value,check", [
    ("pp_deg", 4, lambda p: p.pp_deg == 4 and p.pp_division == [1, 1, 1, 1]),
    ("pp_division", "3,1", lambda p: p.pp_division == [3, 1]),
    ("pipeline_type", "gpipe", lambda p: p.pipeline_type == "gpipe"),
    ("default_dp_type", "ddp", lambda p: [s.dp_type for s in p.layers][::2] == ["ddp", "ddp"]),
    ("embed_sdp", 0, lambda p: p.vocab.dp_type == "zero2"),
    ("vtp", 2, lambda p: p.vocab.tp == 2),
    ("global_bsz", "32", lambda p: p.global_bsz == 32),
    ("chunks", 8, lambda p: p.chunks == 8),
    ("checkpoint", "0,0,0,0", lambda p: not any(s.checkpoint for s in p.layers)),
    ("tp_consecutive_flags", "1,1,1,1", lambda p: all(s.tp_consec for s in p.layers)),
    ("dp_types_enc", "1,1,1,1", lambda p: all(s.dp_type == "zero3" for s in p.layers)),
    ("tp_sizes_enc", [2, 2, 2, 2], lambda p: all(s.tp == 2 for s in p.layers)),
    # use_sp=1: the tp_sizes_enc entry is the layer's Ulysses group size; vsp=1 does it for vocab
    ("use_sp", "0,1,1,0", lambda p: [s.sp for s in p.layers] == [False, "ulysses", "ulysses", False]
     and [s.tp for s in p.layers] == [1, 2, 4, 2]),
    ("vsp", 1, lambda p: p.vocab.sp == "ulysses" and p.vocab.tp == 4),
])
def test_galvatron_each_key_is_honoured(key, value, check):
    d = dict(GALVATRON, **{key: value})
    if key == "pp_deg":
        del d["pp_division"]
    p = plan_mod.from_galvatron_dict(d, world_size=8)
    assert check(p), p.describe()


def test_galvatron_defaults_when_optional_keys_are_absent():
    d = {k: GALVATRON[k] for k in ("pp_deg", "tp_sizes_enc", "tp_consecutive_flags", "dp_types_enc",
                                   "global_bsz", "chunks")}
    p = plan_mod.from_galvatron_dict(d, world_size=8)
    assert p.pipeline_type == "gpipe" and p.pp_division == [2, 2]
    assert p.vocab == VocabStrategy(tp=1, dp_type="ddp") and not any(s.checkpoint for s in p.layers)
    assert [s.dp_type for s in p.layers] == ["ddp", "zero3", "ddp", "zero3"]


def test_galvatron_load_from_file_needs_world_size(tmp_path):
    path = tmp_path / "galvatron.json"
    path.write_text(json.dumps(GALVATRON))
    assert plan_mod.load(str(path), world_size=8) == plan_mod.from_galvatron_dict(GALVATRON, world_size=8)
    plan_error(lambda: plan_mod.load(str(path)), "world size")


@pytest.mark.parametrize("changes,fragments", [
    (dict(use_sp="0,2,0,0"), ["use_sp", "0 or 1"]),
    (dict(vsp=2), ["vsp", "0 or 1"]),
    (dict(cp_sizes_enc="1,2,1,1"), ["cp_sizes_enc"]),
    (dict(vocab_sdp=1), ["vocab_sdp", "remove"]),
    (dict(sp_space="tp+sp"), ["sp_space"]),
    (dict(checkpoint="1,0"), ["checkpoint", "2 entries", "tp_sizes_enc has 4"]),
    (dict(tp_sizes_enc="1,2,x,2"), ["tp_sizes_enc"]),
    (dict(tp_sizes_enc=[1, 2.5, 4, 2]), ["tp_sizes_enc"]),
    (dict(dp_types_enc="0,2,0,1"), ["dp_types_enc", "0 or 1"]),
    (dict(default_dp_type="fsdp"), ["default_dp_type", "use ddp or zero2"]),
    (dict(pipeline_type="zb"), ["pipeline_type"]),
    (dict(pp_deg="two"), ["pp_deg"]),
    (dict(global_bsz=None), ["global_bsz"]),
    (dict(vtp="a"), ["vtp"]),
    (dict(embed_sdp=2), ["embed_sdp"]),
])
def test_galvatron_refusals(changes, fragments):
    d = dict(GALVATRON, **changes)
    plan_error(lambda: plan_mod.from_galvatron_dict(d, world_size=8), *fragments, fix=False)


def test_galvatron_missing_key_and_non_object():
    d = dict(GALVATRON)
    del d["chunks"]
    plan_error(lambda: plan_mod.from_galvatron_dict(d, world_size=8), "chunks", fix=False)
    plan_error(lambda: plan_mod.from_galvatron_dict([GALVATRON], world_size=8), "JSON object", fix=False)


def test_galvatron_imported_plan_is_validated_like_a_native_one():
    p = plan_mod.from_galvatron_dict(dict(GALVATRON, tp_sizes_enc="1,2,8,2"), world_size=8)
    plan_error(p.validate, "layers[2].tp=8")
    p = plan_mod.from_galvatron_dict(dict(GALVATRON, pp_division="2,3"), world_size=8)
    plan_error(p.validate, "pp_division")


# ----------------------------------------------------------------------------- GLOBAL-mode flags

def _flags_plan(argv, world):
    args = arguments.build_parser().parse_args(argv)
    cfg = config_from_args(args)
    return arguments.build_plan(args, cfg, world)


MODEL = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "8", "--seq-length", "16"]


def test_global_flags_equal_the_json_plan():
    got = _flags_plan(MODEL + ["--pp-deg", "2", "--global-tp-deg", "2", "--global-tp-consec", "0", "--sdp", "1",
                               "--global-checkpoint", "1", "--chunks", "2", "--pipeline-type", "pipedream_flush",
                               "--global-train-batch-size", "16"], world=8)
    layer = {"tp": 2, "tp_consec": False, "dp_type": "zero3", "sp": False, "checkpoint": True}
    want = Plan.from_dict({"format": plan_mod.FORMAT, "world_size": 8, "pp_deg": 2, "pp_division": [2, 2],
                           "pipeline_type": "1f1b", "global_bsz": 16, "chunks": 2, "layers": [layer] * 4,
                           "vocab": {"tp": 2, "tp_consec": False, "dp_type": "zero3", "sp": False}})
    assert got == want


def test_global_flags_default_dp_sequence_parallel_and_vocab():
    got = _flags_plan(MODEL + ["--global-tp-deg", "2", "--default-dp-type", "zero2", "--sequence-parallel",
                               "--vocab-tp", "4", "--vocab-sdp", "1", "--micro-batch-size", "2",
                               "--global-batch-size", "8", "--pipeline-type", "gpipe"], world=4)
    layer = {"tp": 2, "tp_consec": True, "dp_type": "zero2", "sp": True, "checkpoint": False}
    want = Plan.from_dict({"format": plan_mod.FORMAT, "world_size": 4, "pp_deg": 1, "pp_division": [4],
                           "pipeline_type": "gpipe", "global_bsz": 8, "chunks": 2, "layers": [layer] * 4,
                           "vocab": {"tp": 4, "tp_consec": True, "dp_type": "zero3", "sp": True}})
    assert got == want


def test_global_flags_equal_the_galvatron_config(tmp_path):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"pp_deg": 2, "tp_sizes_enc": "2,2,2,2", "tp_consecutive_flags": "1,1,1,1",
                                "dp_types_enc": "0,0,0,0", "use_sp": "0,0,0,0", "checkpoint": "0,0,0,0",
                                "global_bsz": 8, "chunks": 4, "pp_division": "2,2", "pipeline_type": "gpipe",
                                "default_dp_type": "zero2", "vtp": 2, "vsp": 0, "embed_sdp": 0}))
    from_file = _flags_plan(MODEL + ["--galvatron-config", str(path)], world=8)
    from_flags = _flags_plan(MODEL + ["--pp-deg", "2", "--global-tp-deg", "2", "--default-dp-type", "zero2",
                                      "--chunks", "4", "--pipeline-type", "gpipe", "--global-batch-size", "8"],
                             world=8)
    assert from_file == from_flags


def test_global_flags_errors():
    from megatron_galvatron.errors import UserError
    for argv, fragment in [(["--pp-deg", "3"], "--pp-deg 3"), (["--global-tp-deg", "3"], "--global-tp-deg 3"),
                           (["--global-batch-size", "6", "--micro-batch-size", "4"], "--global-batch-size 6")]:
        with pytest.raises(UserError, match=fragment):
            _flags_plan(MODEL + argv, world=4)
    with pytest.raises(PlanError, match="--num-attention-heads=6"):
        _flags_plan(["--num-attention-heads", "6", "--hidden-size", "48", "--global-tp-deg", "4"], world=4)


# ----------------------------------------------------------------------------- Ulysses layers

def test_ulysses_layers_round_trip_and_describe():
    p = mixed_plan()
    p.layers[1] = LayerStrategy(tp=2, tp_consec=False, sp="ulysses", dp_type="zero3")
    p.vocab = VocabStrategy(tp=4, sp="ulysses")
    d = json.loads(json.dumps(p.to_dict()))
    assert d["layers"][1]["sp"] == "ulysses" and d["vocab"]["sp"] == "ulysses"
    assert Plan.from_dict(d) == p
    rows = {ln.split()[0]: ln.split() for ln in p.describe().splitlines()[2:] if not ln.startswith("predicted")}
    assert rows["1"][6] == "u" and rows["vocab"][6] == "u"


def test_ulysses_validation():
    # K/V heads need not divide the group (they are replicated), query heads must
    gqa = GPTConfig(family="llama", num_layers=6, hidden_size=64, num_attention_heads=8, num_query_groups=2,
                    ffn_hidden_size=66, seq_length=16)
    p = mixed_plan()
    p.layers = [LayerStrategy(tp=4, sp="ulysses")] * 6
    p.vocab = VocabStrategy(tp=4, sp="ulysses")
    p.validate(gqa)
    p.layers[2] = LayerStrategy(tp=4, sp="ulysses", dp_type="zero2")
    plan_error(lambda: p.validate(GPTConfig(num_layers=6, hidden_size=48, num_attention_heads=6,
                                            ffn_hidden_size=64, seq_length=16)),
               "layers[0].tp=4", "Ulysses", "--num-attention-heads=6")
    plan_error(lambda: p.validate(GPTConfig(family="llama", num_layers=6, hidden_size=64, num_attention_heads=8,
                                            num_query_groups=2, ffn_hidden_size=64, seq_length=18)),
               "layers[0]", "--seq-length 18")
    d = edited(layers=[{"tp": 2, "sp": "ring"}] + [{"tp": 1}] * 5)
    plan_error(lambda: Plan.from_dict(d).validate(), "layers[0].sp", "ulysses", fix=False)
