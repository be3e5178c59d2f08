"""--model-size: each preset builds the published model, any flag overrides its value, and every
CLI that takes model flags takes it."""
import subprocess
import sys

import pytest

from megatron_galvatron.model.config import config_from_args
from megatron_galvatron.model.presets import PRESETS
from megatron_galvatron.training.arguments import build_parser
from tests.pretrain_in_process import pretrain_in_process

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))

# Parameter counts of the released checkpoints (transformers' num_parameters(), tied heads counted once).
PUBLISHED = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
             "gpt2-xl": 1_557_611_200, "llama-7b": 6_738_415_616, "llama-13b": 13_015_864_320,
             "llama-30b": 32_528_943_616, "llama-65b": 65_285_660_672, "llama2-7b": 6_738_415_616,
             "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496,
             "llama3.1-8b": 8_030_261_248, "qwen2-7b": 7_615_616_512, "qwen2.5-7b": 7_615_616_512,
             "qwen2.5-1.5b": 1_543_714_304, "qwen2.5-72b": 72_706_203_648}


def _cfg(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_has_the_published_parameter_count(name):
    assert _cfg("--model-size", name).param_count() == PUBLISHED[name]


def test_every_preset_builds_its_family():
    for name in PRESETS:
        cfg = _cfg("--model-size", name)
        tied_llama = PRESETS[name].get("tie_embeddings")  # no longer the llama preset: a family of its own
        assert cfg.family == (None if tied_llama else PRESETS[name]["model_family"]), name
    qwen, llama3 = _cfg("--model-size", "qwen2-7b"), _cfg("--model-size", "llama3.1-8b")
    assert qwen.add_qkv_bias and qwen.num_query_groups == 4 and qwen.rope_theta == 1e6
    assert llama3.use_rope_scaling and llama3.max_position_embeddings == 131072 and llama3.rope_theta == 5e5


def test_flags_override_the_preset_even_at_their_defaults():
    cfg = _cfg("--model-size", "llama3-8b", "--num-layers", "2", "--rotary-base", "10000", "--seq-length", "128")
    assert (cfg.num_layers, cfg.rope_theta, cfg.seq_length, cfg.hidden_size) == (2, 10000.0, 128, 4096)
    assert _cfg("--model_size", "llama-7b") == _cfg("--model-size", "llama-7b")  # Hetu-Galvatron's spelling
    assert _cfg("--model-size", "gpt2-small", "--model-family", "llama").swiglu  # the family flag too
    assert _cfg().num_layers == 2  # without a preset: the toy defaults, as before


def test_a_shrunk_preset_trains():
    rc, out, err = pretrain_in_process(["--model-size", "qwen2-7b", "--num-layers", "1", "--hidden-size", "64",
                                        "--num-attention-heads", "4", "--num-query-groups", "2", "--ffn-hidden-size",
                                        "96", "--vocab-size", "256", "--seq-length", "16", "--mock-data",
                                        "--train-iters", "1", "--global-batch-size", "2"])
    assert rc == 0, err
    assert "model: llama" in out


def test_the_search_and_profiler_take_presets(tmp_path):
    run = [sys.executable, f"{ROOT}/search/run.py", "--num-gpus", "8", "--memory-gb", "40", "--no-plot",
           "--profile-dir", f"{ROOT}/examples/profiles/synthetic_h100x8_llama7b", "--output", str(tmp_path / "p.json")]
    ok = subprocess.run(run + ["--model-size", "llama-7b", "--seq-length", "4096"], capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        "search/run.py: error: --num-layers is required: give it, or --model-size NAME for a named model"]
    prof = subprocess.run([sys.executable, f"{ROOT}/tools/profile_model.py", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert prof.returncode == 0 and "--model-size" in prof.stdout
