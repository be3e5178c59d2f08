"""A plan written by search/run.py trains under the runtime and matches the reference model."""
import os
import subprocess
import sys

from megatron_galvatron import plan as plan_mod
from search import synthetic
from megatron_galvatron.model.config import GPTConfig
from tests.equivalence import check_plans, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_llama():
    """(the equivalence tests' tiny llama config, its GPTConfig, the model flags search/run.py takes)."""
    cfg = tiny_cfg("llama")
    mc = GPTConfig(family="llama", num_layers=cfg["num_layers"], hidden_size=cfg["hidden_size"],
                   num_attention_heads=cfg["num_attention_heads"], num_query_groups=cfg["num_query_groups"],
                   ffn_hidden_size=cfg["ffn_hidden_size"], vocab_size=cfg["vocab_size"],
                   seq_length=cfg["seq_length"])
    flags = ["--model-family", "llama", "--num-layers", str(mc.num_layers), "--hidden-size", str(mc.hidden_size),
             "--num-attention-heads", str(mc.num_attention_heads), "--num-query-groups", str(mc.num_query_groups),
             "--ffn-hidden-size", str(mc.ffn_hidden_size), "--vocab-size", str(mc.vocab_size),
             "--seq-length", str(mc.seq_length)]
    return cfg, mc, flags


def test_searched_plan_trains_like_the_reference(tmp_path):
    cfg, mc, flags = tiny_llama()
    prof = synthetic.write_profiles(str(tmp_path / "prof"), mc, num_gpus=4, gpus_per_node=4)
    out = tmp_path / "plan.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "search", "run.py"), "--memory-gb", "8", "--num-gpus", "4",
                        "--profile-dir", prof, "--global-batch-size", "8", "--output", str(out), "--no-plot",
                        "--quiet"] + flags, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    check_plans(4, cfg, [plan_mod.load(str(out))])
