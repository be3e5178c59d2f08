"""Search speed on synthetic H100 profiles: 32 layers on 8 GPUs under 2 s, 80 layers on 64 GPUs under 20 s.

CPU time of one thread is measured, so that other jobs on a shared CI machine do not count.
"""
import time

import pytest

from megatron_galvatron.profile_format import load_profiles
from search import _dp_core  # noqa: F401  (the speed is the compiled core's)
from search import synthetic
from search.comm import Network
from search.cost_model import CostModel
from search.engine import Searcher
from megatron_galvatron.model.config import GPTConfig
from search.strategies import Space

LLAMA_7B = GPTConfig(family="llama", num_layers=32, hidden_size=4096, num_attention_heads=32, num_query_groups=32,
                     ffn_hidden_size=11008, vocab_size=32000, seq_length=4096)
LLAMA_70B = GPTConfig(family="llama", num_layers=80, hidden_size=8192, num_attention_heads=64, num_query_groups=8,
                      ffn_hidden_size=28672, vocab_size=32000, seq_length=4096)


@pytest.mark.parametrize("cfg, gpus, limit_s", [(LLAMA_7B, 8, 2.0), (LLAMA_70B, 64, 20.0)])
def test_search_speed(tmp_path, cfg, gpus, limit_s):
    d = synthetic.write_profiles(str(tmp_path), cfg, gpus, 8)
    hw, model = load_profiles(d)
    cost = CostModel(cfg, model, Network(hw, gpus, 8))
    searcher = Searcher(cost, gpus, 40, Space(max_tp=8), [8 * gpus], threads=1)
    start = time.process_time()
    results = searcher.run(progress=False)
    used = time.process_time() - start
    assert results and max(results[0].prediction.peak_mem_gb) <= 40
    assert used < limit_s, f"search took {used:.2f} s of CPU"
