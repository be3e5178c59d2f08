"""A seeded fuzzer of every CLI and every file format we read: bad flag values (negative, zero,
NaN, inf, huge, empty, wrong type) and malformed files (truncated, not UTF-8, deeply nested,
empty, a directory, fields of the wrong type or out of range) must end in exit status 2 and one
line on stderr naming the problem, no traceback, with every input and output left as it was.

Most cases call the CLI's main(argv) in-process (fast); a sample runs as real processes, and one
under torchrun with two ranks, where the line must appear once. docs/reliability.md, 'Bad input'.
"""
import copy
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys

import pytest

from megatron_galvatron.convert import hf_gpt2
from megatron_galvatron.data.indexed_dataset import IndexedDatasetWriter
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import uniform
from tests.megatron_log import lm_losses
from search import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20261203
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
         "--vocab-size", "256"]
CFG = GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=32, vocab_size=256)
TRAIN = MODEL + ["--train-iters", "1", "--global-batch-size", "2"]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, rel))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# cli -> (script, argv before the fuzzed part; {base} and {case} become the sandbox folders)
CLIS = {
    "pretrain": ("pretrain_gpt.py", TRAIN),
    "search": ("search/run.py", ["--memory-gb", "20", "--num-gpus", "8", "--profile-dir", "{base}/prof",
                                 "--output", "{case}/plan.json", "--no-plot", "--quiet", "--threads", "1"] + MODEL),
    "profile_model": ("tools/profile_model.py", ["--out-dir", "{case}/prof", "--device", "cpu", "--quiet",
                                                 "--micro-batch-sizes", "1", "2", "--tp", "1", "--warmup", "0",
                                                 "--iters", "1", "--sustained-seconds", "0", "--soak-seconds", "0"]
                      + MODEL),
    "profile_comm": ("tools/profile_comm.py", ["--out-dir", "{case}/hw", "--quiet"]),
    "preprocess": ("tools/preprocess_data.py", ["--input", "{base}/corpus.jsonl", "--output-prefix", "{case}/out",
                                                "--tokenizer-type", "NullTokenizer", "--vocab-size", "64"]),
    "convert": ("tools/convert_checkpoint.py", []),
    "benchmark": ("tools/benchmark.py", TRAIN + ["--baselines", "plain", "--iters", "1", "--warmup", "0"]),
    "refit": ("megatron_galvatron/profiling/fit.py", []),
}

# Bad values by kind of flag: each must be refused whatever the flag.
_NUMBER = ["abc", "", "nan", "inf", "-inf", "1e999", "9" * 40]
BAD = {
    "pos_int": _NUMBER + ["0", "-1", "1.5", "0x10"],
    "auto_int": _NUMBER + ["0", "-2", "1.5", "0x10"],  # Hetu-Galvatron's -1 ("auto") is a value
    "nonneg_int": _NUMBER + ["-1", "2.5"],
    "pos_float": _NUMBER + ["0", "-1", "-1e-9", "1e30"],
    "nonneg_float": _NUMBER + ["-1", "-1e-9", "1e30"],
    "unit": _NUMBER + ["-0.1", "1", "1.5"],  # [0, 1): dropout, betas
    "unit_closed": _NUMBER + ["-0.1", "1.5"],  # [0, 1]
    "path": ["", "   "],
}
# cli -> [(flag, kind, argv around it: the subcommand for convert)]
FLAGS = {
    "pretrain": [(f, k, []) for f, k in [
        ("--num-layers", "pos_int"), ("--hidden-size", "pos_int"), ("--num-attention-heads", "pos_int"),
        ("--num-query-groups", "pos_int"), ("--ffn-hidden-size", "pos_int"), ("--seq-length", "pos_int"),
        ("--max-position-embeddings", "pos_int"), ("--vocab-size", "pos_int"),
        ("--make-vocab-size-divisible-by", "pos_int"), ("--hidden-dropout", "unit"), ("--attention-dropout", "unit"),
        ("--norm-epsilon", "pos_float"), ("--init-method-std", "pos_float"), ("--rotary-base", "pos_float"),
        ("--rope-scaling-factor", "pos_float"), ("--rope-scaling-low-freq-factor", "pos_float"),
        ("--rope-scaling-high-freq-factor", "pos_float"), ("--rope-scaling-original-max-position-embeddings", "pos_int"),
        ("--pp-deg", "pos_int"), ("--global-tp-deg", "pos_int"), ("--vocab-tp", "pos_int"), ("--chunks", "auto_int"),
        ("--global_tp_deg", "auto_int"), ("--tensor-model-parallel-size", "pos_int"),
        ("--pipeline-model-parallel-size", "pos_int"), ("--pp_deg", "pos_int"), ("--recompute-num-layers", "pos_int"),
        ("--train-samples", "pos_int"), ("--lr-warmup-fraction", "unit_closed"),
        ("--fp8-skip-first", "nonneg_int"), ("--fp8-skip-last", "nonneg_int"), ("--micro-batch-size", "pos_int"),
        ("--global-batch-size", "pos_int"), ("--train-iters", "pos_int"), ("--lr", "pos_float"),
        ("--min-lr", "nonneg_float"), ("--lr-warmup-iters", "nonneg_int"), ("--lr-decay-iters", "pos_int"),
        ("--weight-decay", "nonneg_float"), ("--adam-beta1", "unit"), ("--adam-beta2", "unit"),
        ("--adam-eps", "pos_float"), ("--clip-grad", "nonneg_float"), ("--seed", "nonneg_int"),
        ("--log-interval", "pos_int"), ("--eval-interval", "nonneg_int"), ("--eval-iters", "nonneg_int"),
        ("--save-interval", "nonneg_int"), ("--galvatron-config", "path"), ("--tensorboard-dir", "path"),
        ("--metrics-json", "path"), ("--data-path", "path"), ("--split", "path"), ("--save", "path"),
        ("--load", "path")]],
    "search": [(f, k, []) for f, k in [
        ("--memory-gb", "pos_float"), ("--num-gpus", "pos_int"), ("--num-nodes", "pos_int"), ("--max-tp", "pos_int"),
        ("--max-pp", "pos_int"), ("--global-batch-size", "pos_int"), ("--fp8-skip-first", "nonneg_int"),
        ("--fp8-skip-last", "nonneg_int"), ("--top-k", "pos_int"), ("--threads", "pos_int"),
        ("--profile-dir", "path"), ("--compile-profile-dir", "path"), ("--output", "path"), ("--plot", "path"),
        ("--hidden-size", "pos_int"), ("--ffn-hidden-size", "pos_int")]],
    "profile_model": [(f, k, []) for f, k in [
        ("--micro-batch-sizes", "pos_int"), ("--seq-lengths", "pos_int"), ("--tp", "pos_int"),
        ("--warmup", "nonneg_int"), ("--iters", "pos_int"), ("--sustained-seconds", "nonneg_float"),
        ("--sustained-duty", "unit"), ("--soak-seconds", "nonneg_float"), ("--optimizer-params", "pos_int"),
        ("--seed", "nonneg_int"), ("--out-dir", "path"), ("--hidden-dropout", "unit")]],
    "profile_comm": [(f, k, []) for f, k in [("--warmup", "nonneg_int"), ("--iters", "pos_int"),
                                             ("--out-dir", "path")]],
    "preprocess": [(f, k, []) for f, k in [("--vocab-size", "pos_int"), ("--workers", "pos_int"),
                                           ("--chunk-size", "pos_int"), ("--input", "path"),
                                           ("--output-prefix", "path"), ("--json-keys", "path"),
                                           ("--tokenizer-model", "path")]],
    "convert": [("--max-shard-gb", "pos_float", ["ours-to-hf", "--load", "{case}/ck", "--hf-dir", "{case}/hf"]),
                ("--world-size", "pos_int", ["reshard", "--load", "{case}/ck", "--galvatron-config", "{base}/plan.json"]),
                ("--hf-dir", "path", ["hf-to-ours", "--save", "{case}/ck"]),
                ("--save", "path", ["hf-to-ours", "--hf-dir", "{base}/hf"]),
                ("--load", "path", ["ours-to-hf", "--hf-dir", "{case}/hf"]),
                ("--galvatron-config", "path", ["reshard", "--load", "{case}/ck"])],
    "benchmark": [(f, k, []) for f, k in [("--iters", "pos_int"), ("--warmup", "nonneg_int"),
                                          ("--rounds", "pos_int"), ("--baseline-global-batch", "nonneg_int"),
                                          ("--out", "path"), ("--plans", "path"), ("--profile-dir", "path"),
                                          ("--lr", "pos_float"), ("--hidden-size", "pos_int")]],
}

# Flag combinations that are each fine alone: (cli, argv, a word of the expected line).
COMBOS = [
    ("pretrain", ["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr"),
    ("pretrain", ["--eval-interval", "5"], "--eval-interval"),
    ("pretrain", ["--save-interval", "5"], "--save-interval"),
    ("pretrain", ["--skip-train"], "--skip-train"),
    ("pretrain", ["--data-path"], "--data-path"),
    ("pretrain", ["--mock-data", "--data-path", "{base}/data/tiny_text_document"], "--mock-data"),
    ("pretrain", ["--lr-warmup-iters", "10", "--lr-decay-iters", "5"], "--lr-warmup-iters"),
    ("pretrain", ["--metrics-json", "{base}/data"], "--metrics-json"),
    ("pretrain", ["--metrics-json", "{case}/no/such/folder/m.json"], "--metrics-json"),
    ("pretrain", ["--tensorboard-dir", "{base}/corpus.jsonl"], "--tensorboard-dir"),
    ("pretrain", ["--tensorboard-dir", "{base}/corpus.jsonl/tb"], "--tensorboard-dir"),
    ("pretrain", ["--save", "{base}/corpus.jsonl"], "--save"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--global-batch-size", "4"], "--global-batch-size"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--micro-batch-size", "4"], "--micro-batch-size"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--chunks", "2"], "--chunks"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--sdp", "1"], "--sdp"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--default-dp-type", "zero2"], "--default-dp-type"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--global-checkpoint", "1"], "--global-checkpoint"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--pipeline-type", "gpipe"], "--pipeline-type"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--sequence-parallel"], "--sequence-parallel"),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--vocab-sdp", "1"], "--vocab-sdp"),
    ("pretrain", ["--galvatron-config", "{base}"], "directory"),
    ("pretrain", ["--galvatron-config", "/dev/zero"], "regular file"),
    ("search", ["--profile-dir", "/dev"], "/dev/hardware.json"),
    ("preprocess", ["--input", "/dev/zero"], "regular file"),
    ("convert", ["reshard", "--load", "{case}/ck", "--galvatron-config", "/dev/zero"], ""),
    ("pretrain", ["--galvatron-config", "{base}/plan.json", "--fp8", "tensorwise"], "--fp8"),
    ("pretrain", ["--fp8", "tensorwise", "--fp8-skip-first", "1", "--fp8-skip-last", "1"], "--fp8-skip-first"),
    ("pretrain", ["--train-iters", "1000000000", "--global-batch-size", "16777216"], "samples"),
    ("pretrain", ["--eval-interval", "1", "--eval-iters", "1000000000", "--train-iters", "100"], "--eval-iters"),
    ("pretrain", ["--galvatron-config", "{base}/nowhere.json"], "does not exist"),
    ("search", ["--output", "{base}/data"], "--output"),
    ("search", ["--output", "{case}/no/such/plan.json"], "--output"),
    ("search", ["--output", "{base}/corpus.jsonl/plan.json"], "--output"),
    ("search", ["--plot", "{base}/data"], "--plot"),
    ("search", ["--num-gpus", "6", "--num-nodes", "4"], "--num-nodes"),
    ("search", ["--global-batch-size-range", "8", "4"], "--global-batch-size-range"),
    ("search", ["--fp8-skip-first", "1"], "--fp8"),
    ("search", ["--fp8", "tensorwise", "--fp8-skip-last", "2"], "--fp8-skip-last"),
    ("search", ["--plot", "{case}/p.png"], "--no-plot"),
    ("search", ["--profile-dir", "{base}/nowhere"], "does not exist"),
    ("search", ["--profile-dir", "{base}/corpus.jsonl"], "does not exist"),
    ("profile_model", ["--out-dir", "{base}/corpus.jsonl"], "--out-dir"),
    ("profile_model", ["--out-dir", "{base}/corpus.jsonl/sub"], "--out-dir"),
    ("profile_model", ["--micro-batch-sizes", "1"], "--micro-batch-sizes"),
    ("profile_comm", ["--out-dir", "{base}/corpus.jsonl"], "--out-dir"),
    ("profile_comm", ["--min-size", "1X"], "size"),
    ("profile_comm", ["--min-size", "1M", "--max-size", "1K"], "size"),
    ("profile_comm", ["--max-size", "100000G"], "--max-size"),
    ("profile_comm", ["--overlap-size", "-5M"], "size"),
    ("preprocess", ["--output-prefix", "{base}/corpus.jsonl/out"], "--output-prefix"),
    ("preprocess", ["--output-prefix", "{case}/no/such/out"], "--output-prefix"),
    ("preprocess", ["--input", "{base}/data"], "directory"),
    ("preprocess", ["--input", "{base}/nowhere.jsonl"], "not found"),
    ("preprocess", ["--json-keys", "text", "text"], "--json-keys"),
    ("preprocess", ["--json-keys", "missing"], "missing"),
    ("preprocess", ["--tokenizer-type", "SentencePieceTokenizer"], "--tokenizer-model"),
    ("preprocess", ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "{base}/corpus.jsonl"],
     "corpus.jsonl"),
    ("preprocess", ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "{base}/corpus.jsonl"],
     "corpus.jsonl"),
    ("preprocess", ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "{base}/data"], "data"),
    ("convert", ["hf-to-ours", "--hf-dir", "{base}/hf", "--save", "{base}/corpus.jsonl"], "--save"),
    ("convert", ["hf-to-ours", "--hf-dir", "{base}/corpus.jsonl", "--save", "{case}/ck"], "--hf-dir"),
    ("convert", ["hf-to-ours", "--hf-dir", "{base}/nowhere", "--save", "{case}/ck"], "directory"),
    ("convert", ["ours-to-hf", "--load", "{case}/ck", "--hf-dir", "{base}/corpus.jsonl"], "--hf-dir"),
    ("convert", [], "required"),
    ("convert", ["nonsense"], "invalid choice"),
    ("benchmark", ["--out", "{base}/data"], "--out"),
    ("benchmark", ["--baseline-micro-batches", "1,x"], "--baseline-micro-batches"),
    ("benchmark", ["--baseline-micro-batches", "0"], "--baseline-micro-batches"),
    ("benchmark", ["--global-plans", "tp"], "--global-plans"),
    ("benchmark", ["--global-plans", "tp=x"], "--global-plans"),
    ("benchmark", ["--global-plans", "pp=0"], "--global-plans"),
    ("benchmark", ["--global-plans", "gbs=1000000000000000"], "--global-plans"),
    ("benchmark", ["--plan-variants", "fast"], "--plan-variants"),
    ("benchmark", ["--plans", "{base}/corpus.jsonl"], "plan"),
]


# ------------------------------------------------------------------ malformed files

def _leaves(d, path=()):
    """(path, value) of every scalar, and of every list of lists (a table of points), in d."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(d, list) and d and not isinstance(d[0], list):
        for i, v in enumerate(d):
            yield from _leaves(v, path + (i,))
    else:
        yield path, d


def _set(d, path, value):
    d = copy.deepcopy(d)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


NAN = float("nan")
WRONG = {  # a leaf's type -> values of other types (or out of any range) to put there
    "number": ["x", None, [], {}, True, NAN, float("inf"), -1e300, 10 ** 30],
    "string": [1, None, [], {}, True, "\u00ff" * 3],
    "bool": ["yes", 2, None, []],
    "table": ["x", None, {}, [[None, None, None]], [["a", 1, 2]], [[NAN, 1, 1]]],
}


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, list):
        return "table"
    return "string"


HUGE = b"<a sparse file of 512 MiB>"


def whole_file_mutations(rng: random.Random, text: str):
    """(name, bytes or None for a directory) that no reader may take."""
    raw = text.encode()
    cut = rng.randrange(1, max(2, raw.rindex(b"}")))
    pos = rng.randrange(len(raw))
    yield "truncated", raw[:cut]
    yield "not_utf8", raw[:pos] + b"\xff\xfe\xc3" + raw[pos:]
    yield "latin1", text.replace('"', '"\u00e9', 1).encode("latin-1", "replace")
    yield "deep_list", b"[" * 200000 + b"]" * 200000
    yield "deep_object", b'{"a":' * 100000 + b"1" + b"}" * 100000
    yield "empty", b""
    yield "blank", b"  \n\t\n"
    yield "top_list", b"[1, 2, 3]"
    yield "top_string", b'"plan"'
    yield "top_null", b"null"
    yield "nan_literal", b"NaN"
    yield "huge_int", b'{"x": ' + b"9" * 5000 + b"}"
    yield "binary", bytes(rng.randrange(256) for _ in range(300))
    yield "huge", HUGE
    yield "directory", None


def field_mutations(rng: random.Random, d: dict, n: int, free=()):
    """n (name, bytes, must_refuse) with one leaf replaced by a value of another type; a leaf under
    a `free` path prefix (informational keys the readers do not interpret) may be accepted."""
    leaves = list(_leaves(d))
    for _ in range(n):
        path, v = rng.choice(leaves)
        bad = rng.choice(WRONG[_kind(v)])
        dotted = ".".join(map(str, path))
        must = not any(dotted == f or dotted.startswith(f + ".") for f in free)
        yield f"{dotted}={bad!r}"[:60], json.dumps(_set(d, path, bad)).encode(), must


# ------------------------------------------------------------------ the cases

class Case:
    def __init__(self, cli, argv, expect="", files=None, must_refuse=True):
        self.cli, self.argv, self.expect = cli, argv, expect
        self.files = files or {}  # case-relative path -> bytes, None (a directory) or a base file to copy
        self.must_refuse = must_refuse


def _plan_dicts():
    native = uniform(1, 2, global_bsz=2).to_dict()
    galvatron = {"pp_deg": 1, "tp_sizes_enc": "1,1", "tp_consecutive_flags": "1,1", "dp_types_enc": "0,0",
                 "global_bsz": 2, "chunks": 1, "pipeline_type": "gpipe", "default_dp_type": "ddp"}
    return native, galvatron


PLAN_BAD = {  # key -> values a plan with world size 1, 2 layers, global batch 2 must refuse
    "world_size": [0, -1, 1.5, "1", True, None, 2, 10 ** 15],
    "pp_deg": [0, -1, 2, "1", None, 1.0],
    "global_bsz": [0, -2, 10 ** 15, 2 ** 30, 2.0, "2", None],
    "chunks": [0, 3, 4, 10 ** 9, "1", None],
    "pp_division": [[3], [], "2", [1.5, 0.5], [2, 0], None, [True, True]],
    "layers": [[], {}, [1, 2], [{"tp": 0}, {}], [{"tp": 2}, {}], [{"dp_type": "zero4"}, {}], [{"sp": "yes"}, {}],
               [{"checkpoint": 2}, {}], [{"fp8": "fp4"}, {}], [{"unknown": 1}, {}], None, "x"],
    "vocab": [[], {"tp": 0}, {"dp_type": 3}, {"fp8": "tensorwise"}, "x"],
    "pipeline_type": ["x", 1, None, []],
    "compile": ["true", 1, None],
    "predicted": [[], "x", 3],
    "format": ["x", 1, None],
    "micro_batch": [4],
}
GALVATRON_BAD = {
    "pp_deg": [0, -1, "a", 2, None, []],
    "tp_sizes_enc": ["", "0,0", "a,b", "1", [1], "1" * 5000, "1,1,1", "\u0663,1", None, {}],
    "tp_consecutive_flags": ["2,2", "1", "x,y"],
    "dp_types_enc": ["2,2", "1", None],
    "global_bsz": [0, -1, 10 ** 15, "8x", 1.5, None],
    "chunks": [0, -1, 3, 10 ** 9],
    "use_sp": ["2,2"],
    "checkpoint": ["1", "3,3"],
    "default_dp_type": ["zero3", 1, None],
    "pipeline_type": ["x", 2],
    "embed_sdp": [2, "x"],
    "vtp": [0, 2, "x"],
    "vsp": [2],
    "cp_sizes_enc": ["2,2"],
    "mystery": [1],
}
HF_BAD = {
    "n_embd": [0, -64, "64", 64.5, None, [], 10 ** 12],
    "n_layer": [0, "2", None, 1.5],
    "n_head": [0, 3, "4", None],
    "n_positions": [0, None, "32"],
    "vocab_size": [0, -1, "256", None],
    "n_inner": [0, "256", -1],
    "layer_norm_epsilon": ["x", -1, 0, [], True],
    "resid_pdrop": ["x", 1.5, -0.5],
    "attn_pdrop": [1.0, "x"],
    "initializer_range": [0, -1, "x"],
    "activation_function": ["relu", 1, None],
    "model_type": ["bert", 1, None, []],
    "tie_word_embeddings": [False, "yes", 1],
    "scale_attn_by_inverse_layer_idx": [True],
}
FIT = {"intercept_s": 0.001, "per_token_s": 1e-9, "points": []}
PROFILE_BAD = {  # optional keys, absent from the base profiles: (path, values that must be refused)
    "hardware.json": [
        (("overlap", "by_collective"), [[], "x", {"nope": {"compute_slowdown": 1, "comm_slowdown": 1}},
                                        {"all_reduce": {"compute_slowdown": 0.5, "comm_slowdown": 1}},
                                        {"all_reduce": []}]),
        (("collectives", "all_reduce", "2_consec", "segments"), [
            [], "x", [{"max_bytes": None, "latency_s": 1e-5, "bandwidth_GBps": 0}],
            [{"max_bytes": 5, "latency_s": 1e-5, "bandwidth_GBps": 1}],
            [{"max_bytes": 10, "latency_s": 1e-5, "bandwidth_GBps": 1},
             {"max_bytes": 5, "latency_s": 1e-5, "bandwidth_GBps": 1},
             {"max_bytes": None, "latency_s": 1e-5, "bandwidth_GBps": 1}], [7]]),
        (("collectives", "mystery_op"), [{}]),
        (("collectives", "all_reduce", "3_diagonal"), [{"latency_s": 1, "bandwidth_GBps": 1, "points": []}]),
        (("p2p", "1"), [{"latency_s": 1, "bandwidth_GBps": 1, "points": []}]),
        (("p2p", "x"), [{"latency_s": 1, "bandwidth_GBps": 1, "points": []}]),
        (("hardware", "memory_gb"), [-1, "x", NAN, None]),
        (("hardware", "num_nodes"), [2, 0]),
        (("schema",), ["megatron_galvatron.hardware_profile/99", "megatron_galvatron.model_profile/1", "x/1", 7]),
    ],
    "model.json": [
        (("sustained",), [[], "x", {"slowdown": NAN}, {"slowdown": 0.5}, {"slowdown": 1.1, "duty": "x"},
                          {"slowdown": 1.1, "duty": [[2, 1]]}, {"slowdown": 1.1, "duty": [[0.5]]},
                          {"slowdown": 1.1, "duty": [[0.5, "x"]]}, {}]),
        (("compiled",), ["yes", 1, None]),
        (("layer", "fp8"), [[], {"fp4": {}}, {"tensorwise": []}, {"tensorwise": {}},
                            {"tensorwise": {"time": {"tp1": {"fwd": FIT, "bwd": FIT}}}}]),
        (("layer", "bf16"), [[], "x", {"time": []}, {"time": {"tp1": "x"}}]),
        (("vocab", "bf16"), ["x", {"time": {"tp1_sp": {"fwd": FIT, "bwd": FIT}}}]),
        (("layer", "recompute_fraction"), ["x", {"tp1": -1}, {"tp1": "x"}, {"tpx": 1}, {"tp2": 0.5}]),
        (("vocab", "embedding_time"), [{"tp1": {"fwd": FIT}}, {"tp1": {"fwd": "x", "bwd": FIT}}]),
        (("layer", "memory", "activation_constant_bytes"), [{"tp1": NAN}, []]),
        (("dtype",), ["fp32", 16, None]),
        (("schema",), ["megatron_galvatron.model_profile/99", "megatron_galvatron.model_profile/0", "", None]),
    ],
}
PROFILE_FREE = {"hardware.json": ("hardware.torch", "hardware.nccl"),
                "model.json": ("hardware",) + tuple(f"model.{k}" for k in (
                    "max_position_embeddings", "hidden_dropout", "attention_dropout", "norm_eps", "init_std",
                    "rope_theta", "make_vocab_size_divisible_by", "tie_embeddings", "use_flash_attn",
                    "attention_backend", "add_qkv_bias", "use_rope_scaling", "rope_scaling_factor",
                    "rope_scaling_low_freq_factor", "rope_scaling_high_freq_factor",
                    "rope_scaling_original_max_position_embeddings"))}


def build_cases(base_texts):
    rng = random.Random(SEED)
    cases = {}

    def add(name, case):
        assert name not in cases, name
        cases[name] = case

    for cli, flags in FLAGS.items():
        for flag, kind, around in flags:
            for i, bad in enumerate(BAD[kind]):
                # after a flag of several values, argparse reads "-inf" as an unknown flag, and says so
                expect = (flag, f"unrecognized arguments: {bad}") if bad.startswith("-") else flag
                add(f"{cli}{''.join(around[:1])}{flag}={bad[:12]!r}#{i}", Case(cli, around + [flag, bad], expect))
    for i, (cli, argv, word) in enumerate(COMBOS):
        add(f"combo-{cli}-{i}", Case(cli, argv, word))

    native, galvatron = _plan_dicts()
    for fmt, d, table in (("plan", native, PLAN_BAD), ("galvatron", galvatron, GALVATRON_BAD)):
        for key, values in table.items():
            for i, v in enumerate(values):
                add(f"{fmt}-{key}#{i}", Case("pretrain", ["--galvatron-config", "{case}/p.json"], "",
                                             {"p.json": json.dumps(_set(d, (key,), v)).encode()}))
        text = json.dumps(d, indent=1)
        for name, raw in whole_file_mutations(rng, text):
            add(f"{fmt}-file-{name}", Case("pretrain", ["--galvatron-config", "{case}/p.json"], "p.json",
                                           {"p.json": raw}))
    for key, values in HF_BAD.items():
        for i, v in enumerate(values):
            add(f"hf-{key}#{i}", Case("convert", ["hf-to-ours", "--hf-dir", "{case}/hf", "--save", "{case}/ck"],
                                      "config.json",
                                      {"hf/config.json": json.dumps(_set(base_texts["hf"], (key,), v)).encode()}))
    for name, raw in whole_file_mutations(rng, json.dumps(base_texts["hf"])):
        add(f"hf-file-{name}", Case("convert", ["hf-to-ours", "--hf-dir", "{case}/hf", "--save", "{case}/ck"],
                                    "config.json", {"hf/config.json": raw}))
    for fname in ("hardware.json", "model.json"):
        other = "model.json" if fname == "hardware.json" else "hardware.json"
        argv = ["--profile-dir", "{case}/prof"]
        d = json.loads(base_texts[fname])
        for name, raw in whole_file_mutations(rng, base_texts[fname]):
            add(f"{fname}-file-{name}", Case("search", argv, fname,
                                             {f"prof/{fname}": raw, f"prof/{other}": f"prof/{other}"}))
        if fname == "hardware.json":  # the tool that re-fits its segments in place reads it too
            for name, raw in whole_file_mutations(rng, base_texts[fname]):
                add(f"refit-file-{name}", Case("refit", ["{case}/hw.json"], "hw.json", {"hw.json": raw}))
        for path, values in PROFILE_BAD[fname]:
            for i, v in enumerate(values):
                add(f"{fname}-{'.'.join(path)}#{i}", Case("search", argv, fname, {
                    f"prof/{fname}": json.dumps(_set(d, path, v)).encode(), f"prof/{other}": f"prof/{other}"}))
        for i, (name, raw, must) in enumerate(field_mutations(rng, d, 45, PROFILE_FREE[fname])):
            add(f"{fname}-{name}#{i}", Case("search", argv, fname if must else "",
                                            {f"prof/{fname}": raw, f"prof/{other}": f"prof/{other}"}, must))
    prefix = "data/tiny_text_document"
    idx, binary = base_texts["idx"], base_texts["bin"]
    data_cases = {
        "idx-truncated": {".idx": idx[:20]}, "idx-header-only": {".idx": idx[:34]},
        "idx-magic": {".idx": b"XXXXXXXXX" + idx[9:]}, "idx-version": {".idx": idx[:9] + b"\x07" + idx[10:]},
        "idx-dtype": {".idx": idx[:17] + b"\x63" + idx[18:]}, "idx-empty": {".idx": b""},
        "idx-extra": {".idx": idx + b"\x00" * 8}, "idx-random": {".idx": random.Random(SEED).randbytes(len(idx))},
        "idx-dir": {".idx": None}, "bin-truncated": {".bin": binary[:3]}, "bin-empty": {".bin": b""},
        "bin-dir": {".bin": None}, "bin-missing": {".bin": "-"}, "idx-missing": {".idx": "-"},
        "counts": {".idx": idx[:18] + b"\xff\xff\xff\x7f" + idx[22:]},
        "lengths": {".idx": idx[:34] + b"\xff\xff\xff\xff" + idx[38:]},
    }
    for name, parts in data_cases.items():
        files = {}
        for suffix in (".bin", ".idx"):
            v = parts.get(suffix, prefix + suffix)
            if v != "-":
                files[prefix + suffix] = v
        add(f"data-{name}", Case("pretrain", ["--data-path", "{case}/" + prefix], "tiny_text_document", files))
    for name, argv in (("weights-odd", ["1", "{base}/" + prefix, "2"]), ("weight-nan", ["nan", "{base}/" + prefix]),
                       ("weight-neg", ["-1", "{base}/" + prefix]), ("weights-zero", ["0", "{base}/" + prefix]),
                       ("no-such-prefix", ["{base}/nowhere"])):
        add(f"data-{name}", Case("pretrain", ["--data-path"] + argv, "--data-path" if "weight" in name else ""))
    for i, split in enumerate(["a,b", "-1,1,1", "nan", "0,0,0", "1,2,3,4", "inf,1"]):
        add(f"data-split#{i}", Case("pretrain", ["--data-path", "{base}/" + prefix, "--split", split], "--split"))
    corpus_bad = {"not-json": b'{"text": "1 2"\n{oops\n', "not-object": b'[1, 2]\n', "no-key": b'{"txt": "1"}\n',
                  "not-string": b'{"text": 5}\n', "not-utf8": b'{"text": "1 \xff 2"}\n', "token-range": b'{"text": "999"}\n',
                  "token-word": b'{"text": "one two"}\n', "deep": b"[" * 100000 + b"\n"}
    for name, raw in corpus_bad.items():
        add(f"corpus-{name}", Case("preprocess", ["--input", "{case}/in.jsonl"], "in.jsonl", {"in.jsonl": raw}))
    return cases


# ------------------------------------------------------------------ the sandbox

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz_base")
    uniform(1, 2, global_bsz=2).save(str(base / "plan.json"))
    synthetic.write_profiles(str(base / "prof"), CFG, num_gpus=8, gpus_per_node=8)
    (base / "hf").mkdir()
    (base / "hf" / "config.json").write_text(json.dumps(hf_gpt2.hf_config(CFG, None)))
    (base / "data").mkdir()
    with IndexedDatasetWriter(str(base / "data" / "tiny_text_document"), "uint16") as w:
        for k in range(40):
            w.add_document([(k * 7 + j) % 200 for j in range(40)])
    (base / "corpus.jsonl").write_text('{"text": "1 2 3"}\n{"text": "4 5"}\n')
    texts = {"hf": json.loads((base / "hf" / "config.json").read_text()),
             "hardware.json": (base / "prof" / "hardware.json").read_text(),
             "model.json": (base / "prof" / "model.json").read_text(),
             "idx": (base / "data" / "tiny_text_document.idx").read_bytes(),
             "bin": (base / "data" / "tiny_text_document.bin").read_bytes()}
    mains = {cli: _load(f"fuzz_{cli}", script).main for cli, (script, _) in CLIS.items()}
    return base, build_cases(texts), mains, tmp_path_factory.mktemp("fuzz_cases")


def _tree_hash(root) -> dict:
    out = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files) + [x + "/" for x in dirs]:
            p = os.path.join(d, f)
            if f.endswith("/"):
                out[os.path.relpath(p, root)] = "dir"
            elif os.path.getsize(p) > 1 << 20:  # the sparse files: their size and time say enough
                st = os.stat(p)
                out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
            else:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = hashlib.sha1(fh.read()).hexdigest()
    return out


def _materialize(case: Case, base, case_dir):
    os.makedirs(case_dir, exist_ok=True)
    for rel, content in case.files.items():
        path = os.path.join(case_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if content is None:
            os.makedirs(path)
        elif content is HUGE:
            with open(path, "wb") as f:
                f.truncate(1 << 29)
        elif isinstance(content, str):
            shutil.copy(os.path.join(base, content), path)
        else:
            with open(path, "wb") as f:
                f.write(content)
    script, head = CLIS[case.cli]
    return [a.replace("{base}", str(base)).replace("{case}", str(case_dir)) for a in head + case.argv]


def _check_outcome(case: Case, code, stderr: str, before, after):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    if code in (0, None) and not case.must_refuse:
        return  # an informational field: the run goes on, and writes its outputs
    changed = [sorted(set(b.items()) ^ set(a.items())) for b, a in zip(before, after)]
    assert before == after, f"inputs or outputs changed: {changed}"
    assert code == 2, f"exit status {code!r}, stderr: {stderr[-2000:]}"
    assert len(lines) == 1, f"stderr is not one line:\n{stderr[-2000:]}"
    assert ": error: " in lines[0], lines[0]
    words = case.expect if isinstance(case.expect, tuple) else (case.expect,)
    assert any(w in lines[0] for w in words), f"{case.expect!r} not in {lines[0]!r}"


def _case_names():
    # The names without building the sandbox: the texts only shape the field mutations.
    native, _ = _plan_dicts()
    stub = {"hf": hf_gpt2.hf_config(CFG, None), "idx": b"\x00" * 64, "bin": b"\x00" * 8}
    prof = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fuzz_names_{os.getpid()}")
    synthetic.write_profiles(prof, CFG, num_gpus=8, gpus_per_node=8)
    for f in ("hardware.json", "model.json"):
        stub[f] = open(os.path.join(prof, f)).read()
    shutil.rmtree(prof, ignore_errors=True)
    return sorted(build_cases(stub))


NAMES = _case_names()


def test_there_are_enough_cases():
    assert len(NAMES) >= 500, len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_in_process(sandbox, name, capsys, monkeypatch, tmp_path):
    base, cases, mains, case_root = sandbox
    case = cases[name]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    case_dir = os.path.join(case_root, str(NAMES.index(name)))
    argv = _materialize(case, base, case_dir)
    before = (_tree_hash(base), _tree_hash(case_dir), _tree_hash(tmp_path))
    capsys.readouterr()
    code = None
    try:
        mains[case.cli](argv)
    except SystemExit as e:
        code = e.code
    stderr = capsys.readouterr().err
    _check_outcome(case, code, stderr, before, (_tree_hash(base), _tree_hash(case_dir), _tree_hash(tmp_path)))


SUBPROCESS_SAMPLE = 10


def test_as_processes(sandbox, tmp_path):
    """A seeded sample of the cases, run as the user runs them: one line, exit 2, nothing else."""
    base, cases, _, _ = sandbox
    rng = random.Random(SEED + 1)
    refused = [n for n in NAMES if cases[n].must_refuse]
    sample = rng.sample(refused, SUBPROCESS_SAMPLE)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    procs = []
    for i, name in enumerate(sample):
        case = cases[name]
        case_dir = str(tmp_path / str(i))
        argv = _materialize(case, base, case_dir)
        before = (_tree_hash(base), _tree_hash(case_dir))
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, CLIS[case.cli][0])] + argv, cwd=case_dir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((name, case, case_dir, before, p))
    for name, case, case_dir, before, p in procs:
        _, stderr = p.communicate(timeout=120)
        _check_outcome(case, p.returncode, stderr, before, (_tree_hash(base), _tree_hash(case_dir)))


def test_under_torchrun_the_error_is_one_line(tmp_path):
    """Two ranks that both refuse --lr -1: our line once, exit 2 on each (torchrun then reports the
    failed children in its own summary, which docs/reliability.md describes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        os.path.join(ROOT, "pretrain_gpt.py"), "--lr", "-1"] + TRAIN, cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "pretrain_gpt.py: error:" in ln]
    assert len(ours) == 1, r.stdout + r.stderr
    assert "argument --lr" in ours[0]
    assert r.returncode != 0
    assert "exitcode  : 2" in r.stderr or "exit code 2" in r.stderr or "exitcode: 2" in r.stderr.replace(" ", ""), \
        r.stderr[-2000:]


PARSERS = {"pretrain": ("pretrain_gpt.py", None), "search": ("search/run.py", "build_parser"),
           "profile_model": ("tools/profile_model.py", "build_parser"),
           "profile_comm": ("tools/profile_comm.py", "build_parser"),
           "preprocess": ("tools/preprocess_data.py", "build_parser"),
           "convert": ("tools/convert_checkpoint.py", "build_parser"), "benchmark": ("tools/benchmark.py", "benchmark_parser")}


def _all_parsers(p):
    yield p
    for a in p._actions:
        for sub in (a.choices or {}).values() if hasattr(a, "_name_parser_map") else ():
            yield from _all_parsers(sub)


@pytest.mark.parametrize("cli", sorted(PARSERS))
def test_every_numeric_flag_is_range_checked(cli):
    """A flag added with a bare type=int or type=float would take -1, 0 or nan: every number is
    parsed by megatron_galvatron/flag_types.py, and errors are that module's one line."""
    from megatron_galvatron.flag_types import ArgumentParser
    from megatron_galvatron.training.arguments import build_parser
    script, builder = PARSERS[cli]
    parser = build_parser() if builder is None else getattr(_load(f"parsers_{cli}", script), builder)()
    if cli == "pretrain":  # a renamed flag must not drop out of the table of ranges
        from megatron_galvatron.training.argument_checks import FLAG_TYPES
        assert set(FLAG_TYPES) <= {a.dest for a in parser._actions}
    for p in _all_parsers(parser):
        assert isinstance(p, ArgumentParser), p.prog
        bare = [a.option_strings[0] for a in p._actions if a.type in (int, float) and not a.choices]
        assert not bare, f"{p.prog}: {bare} take any number: give them a flag_types type"


def test_a_failed_plan_save_leaves_no_temporary_file(tmp_path):
    plan = uniform(1, 2)
    plan.predicted = {"unserializable": object()}
    with pytest.raises(TypeError):
        plan.save(str(tmp_path / "plan.json"))
    assert os.listdir(tmp_path) == []


def test_a_finished_run_launched_again_trains_nothing(sandbox, tmp_path, capsys, monkeypatch):
    """--load of a checkpoint at --train-iters: one line, exit 0, the checkpoint left as it was,
    and no model built for it."""
    mains = sandbox[2]
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ckpt = str(tmp_path / "ckpt")
    mains["pretrain"](TRAIN + ["--mock-data", "--save", ckpt])
    before = _tree_hash(ckpt)
    capsys.readouterr()

    def no_model(*args):
        raise AssertionError("a model was built for a run with nothing to train")
    monkeypatch.setattr("megatron_galvatron.training.train.StageModel", no_model)
    mains["pretrain"](TRAIN + ["--mock-data", "--load", ckpt, "--save", ckpt])
    out = capsys.readouterr().out
    assert "is at iteration 1 and --train-iters is 1; raise --train-iters" in out, out
    assert not lm_losses(out)  # no step ran

    def saved(tree):  # the lock file names the run that holds the directory now: the second one
        return {k: v for k, v in tree.items() if k != ".lock"}
    assert len(saved(before)) > 3 and saved(_tree_hash(ckpt)) == saved(before)
