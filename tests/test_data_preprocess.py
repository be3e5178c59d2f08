"""tools/preprocess_data.py end to end: the written tokens equal the tokenizer's own ids."""
import io
import json
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

from megatron_galvatron.data.errors import DataError
from megatron_galvatron.data.indexed_dataset import IndexedDataset
from megatron_galvatron.data.tokenizer import build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "preprocess_data.py")


def make_texts(n, seed=0):
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 6))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(n)]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def run_tool(*args, cwd=None):
    # from outside the repo, so the tool has to find the package itself
    return subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or "/", timeout=120)


def assert_one_line_error(proc, words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("preprocess_data.py: error:"), proc.stderr
    assert "Traceback" not in proc.stderr and words in lines[0], proc.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    texts = make_texts(400)
    records = [{"text": t, "title": t.split()[0]} for t in texts]
    records[7]["text"] = ""  # an empty document must survive as a document with no tokens
    write_jsonl(d / "in.jsonl", records)
    return d, records


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(make_texts(500, seed=1)), model_writer=buf,
                                   vocab_size=120, minloglevel=2)
    path = tmp_path_factory.mktemp("sp") / "m.model"
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<|endoftext|>"],
                                             show_progress=False)
    tok.train_from_iterator(make_texts(500, seed=2), trainer)
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_sentencepiece_round_trip_with_workers(corpus, sp_model):
    import sentencepiece as spm

    d, records = corpus
    proc = run_tool("--input", d / "in.jsonl", "--output-prefix", d / "sp", "--json-keys", "text", "title",
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model,
                    "--append-eod", "--workers", "2", "--chunk-size", "7")
    assert proc.returncode == 0, proc.stderr
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    for key in ("text", "title"):
        ds = IndexedDataset(str(d / f"sp_{key}_document"))
        assert ds.dtype == np.uint16 and ds.num_documents == len(records)
        for i, r in enumerate(records):
            ids = sp.encode(r[key])
            expected = ids + [sp.eos_id()] if ids else []
            assert ds.document(i).tolist() == expected


def test_huggingface_round_trip(corpus, hf_model):
    from tokenizers import Tokenizer

    d, records = corpus
    proc = run_tool("--input", d / "in.jsonl", "--output-prefix", d / "hf",
                    "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_model, "--append-eod")
    assert proc.returncode == 0, proc.stderr
    tok = Tokenizer.from_file(hf_model)
    eod = tok.token_to_id("<|endoftext|>")
    ds = IndexedDataset(str(d / "hf_text_document"))
    for i, r in enumerate(records):
        ids = tok.encode(r["text"], add_special_tokens=False).ids
        assert ds.document(i).tolist() == (ids + [eod] if ids else [])
    t = build_tokenizer("HuggingFaceTokenizer", os.path.dirname(hf_model))
    assert t.eod == eod and t.detokenize(t.tokenize("abc")).replace(" ", "") == "abc"


def test_null_tokenizer_large_vocab_uses_int32(tmp_path):
    docs = [[3, 70000, 12], [], [99999]]
    write_jsonl(tmp_path / "in.jsonl", [{"text": " ".join(map(str, d))} for d in docs])
    proc = run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "n",
                    "--tokenizer-type", "NullTokenizer", "--vocab-size", 100000, "--append-eod")
    assert proc.returncode == 0, proc.stderr
    ds = IndexedDataset(str(tmp_path / "n_text_document"))
    assert ds.dtype == np.int32
    assert [ds.document(i).tolist() for i in range(3)] == [[3, 70000, 12, 100000], [], [99999, 100000]]


def test_missing_tokenizer_model_exits_2(corpus, tmp_path):
    d, _ = corpus
    proc = run_tool("--input", d / "in.jsonl", "--output-prefix", tmp_path / "x",
                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tmp_path / "nope.model")
    assert_one_line_error(proc, "nope.model not found")


@pytest.mark.parametrize("kind", ["SentencePieceTokenizer", "HuggingFaceTokenizer"])
def test_corrupt_tokenizer_model_exits_2(corpus, tmp_path, sp_model, kind):
    d, _ = corpus
    bad = tmp_path / "bad.model"
    good = open(sp_model, "rb").read()
    bad.write_bytes(good[: len(good) // 3] + b"\xff\x00garbage")
    if kind == "HuggingFaceTokenizer":
        pytest.importorskip("tokenizers")
        bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    proc = run_tool("--input", d / "in.jsonl", "--output-prefix", tmp_path / "x",
                    "--tokenizer-type", kind, "--tokenizer-model", bad)
    assert_one_line_error(proc, "bad.model is not a valid")
    with pytest.raises(DataError):
        build_tokenizer(kind, str(bad))
    assert not list(tmp_path.glob("x*"))


def test_bad_input_line_exits_2_and_leaves_no_output(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "1 2"}\n{"text": "3"\n')
    proc = run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "x",
                    "--tokenizer-type", "NullTokenizer", "--vocab-size", 10, "--workers", 2)
    assert_one_line_error(proc, "in.jsonl:2: not valid JSON")
    assert not list(tmp_path.glob("x*"))
    (tmp_path / "in.jsonl").write_text('{"body": "1 2"}\n')
    proc = run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "x",
                    "--tokenizer-type", "NullTokenizer", "--vocab-size", 10)
    assert_one_line_error(proc, "no key 'text'")
    (tmp_path / "in.jsonl").write_bytes(b'{"text": "1"}\n{"text": "\xff\xfe"}\n')
    proc = run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "x",
                    "--tokenizer-type", "NullTokenizer", "--vocab-size", 10, "--workers", 2)
    assert_one_line_error(proc, "not UTF-8")


def test_corrupt_index_via_reader_is_one_line(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "1 2 3"}])
    assert run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "n",
                    "--tokenizer-type", "NullTokenizer", "--vocab-size", 10).returncode == 0
    idx = tmp_path / "n_text_document.idx"
    idx.write_bytes(idx.read_bytes()[:-1])
    with pytest.raises(DataError, match="n_text_document.idx: truncated"):
        IndexedDataset(str(tmp_path / "n_text_document"))
    assert struct.unpack("<B", (tmp_path / "n_text_document.idx").read_bytes()[17:18])[0] == 8
