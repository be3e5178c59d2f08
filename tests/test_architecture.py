"""The architecture fields (normalization, positions, SwiGLU, linear biases, tied head, grouped-query
attention): each mixture builds, trains under TP/SP and ZeRO-3 like the independent reference, and
the families stay presets of them (old records naming only a family still load)."""
import pytest
import torch

from megatron_galvatron.benchmark.baselines import _Ours
from megatron_galvatron.checkpoint.architecture import check_config, config_from_record, model_flags
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import FAMILY_ARCHITECTURE, GPTConfig, config_from_args
from megatron_galvatron.plan import uniform
from megatron_galvatron.profile_format import ProfileError, check_model_matches, parse_model
from megatron_galvatron.training.arguments import build_parser
from search.synthetic import model_profile
from tests.equivalence import check_plans, tiny_cfg

# Mixtures neither family is: each field away from its family's value at least once.
MIXTURES = {
    "gpt2_rms_rope_gqa": dict(family="gpt2", normalization="RMSNorm", position_embedding_type="rope",
                              num_query_groups=2),
    "llama_layernorm_learned_bias_tied": dict(family="llama", normalization="LayerNorm",
                                              position_embedding_type="learned_absolute", add_bias_linear=True,
                                              tie_embeddings=True),
    "gpt2_swiglu_nobias_untied": dict(family="gpt2", swiglu=True, add_bias_linear=False, tie_embeddings=False),
}
SHAPE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, seq_length=12)
CPU = torch.device("cpu")


def _parse(argv):
    return config_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_mixture_trains_like_the_reference(name):
    kw = dict(MIXTURES[name])
    cfg = tiny_cfg(kw.pop("family"), num_attention_heads=4, **kw)
    check_plans(2, cfg, [uniform(2, 4, tp=2, sp=True, global_bsz=4, chunks=2),
                         uniform(2, 4, dp_type="zero3", global_bsz=4, chunks=2)], steps=2)


@pytest.mark.parametrize("name", sorted(MIXTURES) + ["gpt2", "llama"])
def test_built_model_has_the_counted_parameters(name):
    kw = MIXTURES.get(name, {"family": name})
    cfg = GPTConfig(**SHAPE, **kw)
    assert cfg.family == (name if name in FAMILY_ARCHITECTURE else None)
    ours = _Ours(cfg, CPU, seed=1, checkpoint=False)
    padding = (ours.stage.vocab.padded_vocab - cfg.vocab_size) * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
    assert sum(p.numel() for p in ours.stage.parameters()) - padding == cfg.param_count()


def test_megatron_architecture_flags_spell_the_llama_family():
    shape = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4"]
    megatron = _parse(shape + ["--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope",
                               "--untie-embeddings-and-output-weights", "--disable-bias-linear",
                               "--group-query-attention", "--num-query-groups", "2"])
    assert megatron == _parse(shape + ["--model-family", "llama", "--num-query-groups", "2"])
    assert megatron.family == "llama"
    # Megatron-LM's default under --group-query-attention is one group
    assert _parse(shape + ["--model-family", "llama", "--group-query-attention"]).num_query_groups == 1
    # every field of a preset is overridable by its flag, both ways
    assert _parse(shape + ["--model-family", "llama", "--no-swiglu"]).swiglu is False
    assert _parse(shape + ["--model-family", "llama", "--add-bias-linear"]).add_bias_linear is True
    assert _parse(shape + ["--model-family", "llama", "--tie-embeddings-and-output-weights"]).tie_embeddings


@pytest.mark.parametrize("name", sorted(MIXTURES) + ["gpt2", "llama"])
def test_model_flags_rebuild_the_config(name):
    cfg = GPTConfig(**SHAPE, **MIXTURES.get(name, {"family": name}))
    again = _parse(model_flags(cfg).split() + ["--seq-length", str(cfg.seq_length),
                                               "--make-vocab-size-divisible-by", "128"])
    assert again == cfg


def test_records_naming_only_a_family_load_as_its_preset():
    for family, preset in FAMILY_ARCHITECTURE.items():
        old = {"family": family, **SHAPE, "num_query_groups": 4, "ffn_hidden_size": 128}
        cfg = config_from_record(old)
        assert {k: getattr(cfg, k) for k in preset} == preset
        assert check_config(old, GPTConfig(**SHAPE, family=family, ffn_hidden_size=128), "old") == []
    with pytest.raises(Exception, match="--normalization LayerNorm"):
        check_config({"family": "gpt2", **SHAPE}, GPTConfig(**SHAPE, normalization="RMSNorm"), "old")


def test_unknown_values_are_refused_naming_the_flag():
    for kw, words in ((dict(normalization="layernorm"), "--normalization"),
                      (dict(position_embedding_type="alibi"), "--position-embedding-type"),
                      (dict(swiglu="yes"), "swiglu")):
        with pytest.raises(UserError, match=words):
            GPTConfig(**SHAPE, **kw)


def _profile(cfg, model):
    d = model_profile(cfg)
    d["model"] = model
    return d


def test_profiles_naming_only_a_family_match_its_preset():
    cfg = GPTConfig(**SHAPE, family="llama")
    dims = {k: v for k, v in cfg.to_dict().items() if k in ("num_layers", "hidden_size", "num_attention_heads",
                                                            "num_query_groups", "ffn_hidden_size", "vocab_size",
                                                            "seq_length")}
    old = parse_model(_profile(cfg, {"family": "llama", **dims}))
    check_model_matches(old, cfg.to_dict())
    with pytest.raises(ProfileError, match="--normalization"):
        check_model_matches(old, GPTConfig(**SHAPE, family="llama", normalization="LayerNorm").to_dict())
    new = parse_model(_profile(cfg, {k: v for k, v in cfg.to_dict().items() if k != "family"}))
    check_model_matches(new, cfg.to_dict())
