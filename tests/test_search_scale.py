"""The search at scale: the same plans as the unoptimised search on the engine's instances, a
CPU-time bound at 256 GPUs, the whole command at 1,024 GPUs within a minute, and its progress lines.

Times are CPU seconds (of the searching thread, or of the child process), so that other jobs
on a shared machine do not count.
"""
import contextlib
import functools
import io
import json
import resource
import subprocess
import sys
import time

import pytest

from megatron_galvatron import plan as plans
from megatron_galvatron.profile_format import load_profiles
from megatron_galvatron.model.config import GPTConfig
from search import _dp_core  # noqa: F401  (the speed is the compiled core's)
from search import cost_model, dp, engine, synthetic
from search.comm import Network
from search.cost_model import CostModel
from search.engine import Searcher
from search.progress import Progress
from search.strategies import Space
from tests.test_relayout_sets import pairwise_exchange_sets
from tests.test_search_speed import LLAMA_7B, LLAMA_70B

GPT = GPTConfig(family="gpt2", num_layers=8, hidden_size=1024, num_attention_heads=16, num_query_groups=16,
                ffn_hidden_size=4096, vocab_size=50304, seq_length=1024)
LLAMA_16 = GPTConfig(family="llama", num_layers=16, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                     ffn_hidden_size=11008, vocab_size=32000, seq_length=4096)


def searcher(tmp_path, cfg, gpus, memory_gb, preset="h100", batch=None, threads=1, **space):
    d = synthetic.write_profiles(str(tmp_path / f"{preset}-{gpus}"), cfg, gpus, 8, preset)
    hw, model = load_profiles(d)
    cost = CostModel(cfg, model, Network(hw, gpus, min(8, gpus)))
    return Searcher(cost, gpus, memory_gb, Space(**space), [batch or 8 * gpus], threads=threads)


@contextlib.contextmanager
def unoptimised(monkeypatch):
    """The search as it was before it was made fast: re-layout sets block against block, every
    stage's plan solved by a second DP pass, every layer priced afresh for every plan."""
    cost_model._largest_exchange_set.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(cost_model, "exchange_sets", pairwise_exchange_sets)
        m.setattr(dp, "backtrack", lambda choices, intra, mem, group, gtrans, n, budget, final=None:
                  dp.solve(intra[:n], mem[:n], group, gtrans, budget, final))
        m.setattr(CostModel, "memoised", lambda self: contextlib.nullcontext(self))
        yield
    cost_model._largest_exchange_set.cache_clear()


INSTANCES = [  # (model, GPUs, GiB, preset, batch, space): those of test_search_engine and test_search_speed
    (GPT, 8, 1000, "fast-links", 32, {}),
    (GPT, 8, 3.0, "h100", 32, {}),
    (GPT, 8, 2.2, "h100", 32, {"max_tp": 2}),
    (LLAMA_16, 16, 8, "fast-links", 64, {}),
    (LLAMA_7B, 8, 40, "h100", 64, {"max_tp": 8}),
]


@pytest.mark.parametrize("cfg, gpus, memory_gb, preset, batch, space", INSTANCES)
def test_optimised_search_picks_the_plans_of_the_unoptimised_one(tmp_path, monkeypatch, cfg, gpus, memory_gb,
                                                                 preset, batch, space):
    fast = searcher(tmp_path, cfg, gpus, memory_gb, preset, batch, threads=2, **space).run(top_k=5, progress=False)
    with unoptimised(monkeypatch):
        slow = searcher(tmp_path, cfg, gpus, memory_gb, preset, batch, **space).run(top_k=5, progress=False)
    assert [r.plan.to_dict() for r in fast] == [r.plan.to_dict() for r in slow]
    assert [r.prediction.iter_time_s for r in fast] == [r.prediction.iter_time_s for r in slow]


def test_256_gpus_search_in_seconds_of_cpu(tmp_path):
    s = searcher(tmp_path, LLAMA_70B, 256, 40, max_tp=8)
    start = time.thread_time()
    best = s.run(progress=False)[0]
    used = time.thread_time() - start
    assert max(best.prediction.peak_mem_gb) <= 40
    best.plan.validate(LLAMA_70B, 256)
    assert used < 15.0, f"search took {used:.2f} s of CPU"  # 4.3 s when it was written


def test_1024_gpu_command_within_a_minute(tmp_path):
    d = synthetic.write_profiles(str(tmp_path / "prof"), LLAMA_70B, 1024, 8)
    out = tmp_path / "plan.json"
    flags = ["--model-family", "llama", "--num-layers", "80", "--hidden-size", "8192", "--num-attention-heads", "64",
             "--num-query-groups", "8", "--ffn-hidden-size", "28672", "--vocab-size", "32000", "--seq-length", "4096"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "search/run.py", "--memory-gb", "40", "--num-gpus", "1024", "--profile-dir", d,
                        "--output", str(out), "--no-plot", "--quiet", "--threads", "1"] + flags,
                       capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert used < 60.0, f"the command took {used:.1f} s of CPU"  # 5 s when it was written
    plan = plans.load(str(out))
    plan.validate(LLAMA_70B, 1024)
    assert max(json.loads(out.read_text())["predicted"]["peak_mem_gb"]) <= 40


def test_progress_lines_are_plain_and_estimate_the_time_left():
    now = [0.0]
    out = io.StringIO()
    p = Progress(stream=out, every_s=2.0, clock=lambda: now[0])
    p.bounds(10, 100)  # not due yet
    now[0] = 3.0
    p.bounds(30, 100)  # 3 s for 30: 7 s for the other 70
    p.begin_solving()
    now[0] = 4.0
    p.report(2, lambda: 5, 7, 70)  # not due: 1 s since the last line
    now[0] = 7.0
    p.report(4, lambda: 6, 9, 70)  # 4 s for 4 solves: 6 s for 6 more
    lines = out.getvalue().splitlines()
    assert lines == ["search: bounds of 30/100 candidates, 3 s, about 7 s to the first solve",
                     "search: 9/70 candidates visited, 4 solved, about 6 to solve; 7 s, about 6 s left"]
    quiet = io.StringIO()
    Progress(enabled=False, stream=quiet, every_s=0.0).report(1, lambda: 1, 1, 1)
    assert quiet.getvalue() == ""


def test_search_reports_progress_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "Progress", functools.partial(Progress, every_s=0.0))
    searcher(tmp_path, GPT, 8, 3.0, batch=32).run(progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("search: ") for line in lines)
    assert any("s left" in line for line in lines)
