"""Packing, epochs, split and blending of GPT samples, on files whose every token id is unique,
so each token's origin (document, position) is readable from its value."""
from collections import Counter

import numpy as np
import pytest

from megatron_galvatron.data.errors import DataError
from megatron_galvatron.data.gpt_dataset import (
    GPTDataset, blending_indices, build_train_valid_test_datasets, parse_data_path, parse_split, split_ranges,
)
from megatron_galvatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter


def write_unique(prefix, num_docs, seed=0, base=0, multi_sequence=False):
    """Document d holds consecutive ids; returns the list of documents' token lists."""
    rng = np.random.default_rng(seed)
    docs, nxt = [], base
    with IndexedDatasetWriter(prefix, np.int32) as w:
        for d in range(num_docs):
            n = 0 if d % 17 == 5 else int(rng.integers(1, 40))
            toks = list(range(nxt, nxt + n))
            nxt += n
            docs.append(toks)
            if multi_sequence and n > 2:
                w.add_sequence(toks[:2])
                w.add_sequence([])
                w.add_sequence(toks[2:])
                w.end_document()
            else:
                w.add_document(toks)
    return docs


@pytest.fixture
def unique(tmp_path):
    prefix = str(tmp_path / "u")
    docs = write_unique(prefix, 300, multi_sequence=True)
    return prefix, docs


def stream_of(ds: GPTDataset) -> np.ndarray:
    return np.concatenate([ds.indexed[int(s)] for s in ds.sequence_order]).astype(np.int64)


@pytest.mark.parametrize("seq_length", [1, 7, 64, 5000])
def test_one_epoch_covers_every_token_exactly_once(unique, seq_length):
    prefix, docs = unique
    total = sum(map(len, docs))
    n = (total - 1) // seq_length
    assert n >= 1
    ds = GPTDataset(IndexedDataset(prefix), (0, len(docs)), seq_length, n, seed=3)
    assert ds.num_epochs == 1
    samples = [ds[i] for i in range(len(ds))]
    assert all(s.dtype == np.int64 and s.shape == (seq_length + 1,) for s in samples)
    inputs = Counter(int(t) for s in samples for t in s[:-1])
    assert max(inputs.values()) == 1 and len(inputs) == n * seq_length
    assert total - len(inputs) < seq_length + 1  # only the final partial sample is missing
    # each sample is a contiguous window of the shuffled document stream, crossing documents
    stream = stream_of(ds)
    assert sorted(stream.tolist()) == list(range(total))
    for i, s in enumerate(samples):
        j = int(ds.shuffle_index[i])
        assert np.array_equal(s, stream[j * seq_length: j * seq_length + seq_length + 1])


def test_documents_are_shuffled_but_kept_whole(unique):
    prefix, docs = unique
    ds = GPTDataset(IndexedDataset(prefix), (0, len(docs)), 16, 2000, seed=5)
    assert ds.num_epochs > 2
    stream = stream_of(ds)
    total = sum(map(len, docs))
    starts = [d[0] for d in docs if d]
    epochs = [stream[e * total:(e + 1) * total] for e in range(ds.num_epochs)]
    for ep in epochs:
        assert sorted(ep.tolist()) == list(range(total))
        # inside an epoch a document's tokens are consecutive and ascending
        breaks = np.flatnonzero(np.diff(ep) != 1) + 1
        assert set(ep[np.r_[0, breaks]].tolist()) <= set(starts)
    assert not np.array_equal(epochs[0], epochs[1])


def test_epochs_are_served_in_order(unique):
    prefix, docs = unique
    total = sum(map(len, docs))
    L = 16
    ds = GPTDataset(IndexedDataset(prefix), (0, len(docs)), L, 2000, seed=5)
    first_epoch = -(-total // L)  # samples starting inside epoch 0
    seen = Counter(int(t) for i in range(first_epoch) for t in ds[i][:-1])
    assert set(seen) >= set(range(total)) and max(seen.values()) <= 2
    everything = Counter(int(t) for i in range(len(ds)) for t in ds[i][:-1])
    assert min(everything.values()) >= ds.num_epochs - 1 and max(everything.values()) <= ds.num_epochs


def test_same_seed_same_samples_other_seed_other(unique):
    prefix, docs = unique
    idx = IndexedDataset(prefix)
    a, b, c = (GPTDataset(idx, (0, len(docs)), 8, 300, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a[i], b[i]) for i in range(300))
    assert any(not np.array_equal(a[i], c[i]) for i in range(300))


def test_parse_split_and_ranges():
    assert split_ranges(parse_split("949,50,1"), 1000) == [(0, 949), (949, 999), (999, 1000)]
    assert split_ranges(parse_split("8/1/1"), 10) == [(0, 8), (8, 9), (9, 10)]
    assert split_ranges(parse_split("1"), 7) == [(0, 7), (7, 7), (7, 7)]
    assert parse_split("0.9,0.1") == pytest.approx([0.9, 0.1, 0.0])
    for bad in ("a,b", "1,2,3,4", "-1,2", "0,0,0"):
        with pytest.raises(DataError):
            parse_split(bad)


def test_split_keeps_documents_apart(tmp_path):
    prefix = str(tmp_path / "s")
    docs = write_unique(prefix, 1000)
    owner = {t: d for d, toks in enumerate(docs) for t in toks}
    train, valid, test = build_train_valid_test_datasets([prefix], "949,50,1", 32, 1, (500, 50, 3))
    for ds, (lo, hi) in ((train, (0, 949)), (valid, (949, 999)), (test, (999, 1000))):
        got = {owner[int(t)] for i in range(len(ds)) for t in ds[i]}
        assert got <= set(range(lo, hi))
    assert len(train) == 500 and len(valid) == 50 and len(test) == 3
    assert {owner[int(t)] for i in range(len(valid)) for t in valid[i]} == {
        d for d in range(949, 999) if docs[d]}


def test_none_for_unrequested_or_empty_splits(tmp_path):
    prefix = str(tmp_path / "s")
    write_unique(prefix, 50)
    train, valid, test = build_train_valid_test_datasets([prefix], "98,2,0", 8, 0, (10, 0, 5))
    assert len(train) == 10 and valid is None and test is None
    _, _, test = build_train_valid_test_datasets([prefix], "99,0,1", 8, 0, (10, 0, 5))
    assert test is None  # 1% of 50 documents rounds to none


def test_blending_proportions_are_exact_in_every_prefix():
    for weights in ([0.3, 0.7], [1, 2, 3], [0.01, 0.99], [1] * 7):
        n = 3000
        owner, rank = blending_indices(weights, n)
        w = np.asarray(weights, dtype=float) / sum(weights)
        counts = np.zeros(len(w))
        for m, d in enumerate(owner, 1):
            assert rank[m - 1] == counts[d]  # each dataset's samples are taken in order
            counts[d] += 1
            assert np.all(np.abs(counts - w * m) < 1.0)
    assert np.array_equal(blending_indices([0.3, 0.7], 10)[0], blending_indices([3, 7], 10)[0])


def test_blended_build_from_data_path_pairs(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_unique(a, 200, seed=1)
    write_unique(b, 200, seed=2, base=10**6)
    train, valid, _ = build_train_valid_test_datasets(["0.25", a, "0.75", b + ".bin"], "90,10,0", 16, 9,
                                                      (1000, 40, 0))
    from_b = [bool(train[i][0] >= 10**6) for i in range(len(train))]
    assert len(train) == 1000 and sum(from_b) == 750
    assert all(bool((train[i] >= 10**6).all()) == from_b[i] for i in range(len(train)))
    again, _, _ = build_train_valid_test_datasets(["0.25", a, "0.75", b], "90,10,0", 16, 9, (1000, 40, 0))
    assert all(np.array_equal(train[i], again[i]) for i in range(0, 1000, 37))
    assert len(valid) == 40


@pytest.mark.parametrize("data_path,words", [
    ([], "empty"),
    (["0.5", "a", "b"], "3 entries"),
    (["x", "a", "0.5", "b"], "should be a weight"),
    (["-1", "a", "1", "b"], ">= 0"),
])
def test_bad_data_path_is_a_data_error(data_path, words):
    with pytest.raises(DataError, match=words):
        parse_data_path(data_path)


def test_missing_prefix_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_train_valid_test_datasets([str(tmp_path / "none")], "1", 8, 0, (1, 0, 0))
