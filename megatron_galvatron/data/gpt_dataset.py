"""GPT training samples from indexed datasets: split, pack, shuffle, blend.

Documents are packed back to back, across document boundaries, into a token stream; sample j
is stream tokens [j*L, j*L + L + 1) for L = seq_length, so consecutive samples share one token
(the last label of one is the first input of the next). Each epoch is a fresh seeded permutation
of the split's documents, and as many epochs are laid end to end as the requested number of
samples needs. Samples are shuffled within the epoch they start in, and epochs are served in
order, so every token of the split is seen once per epoch before any is seen again.

Everything is rebuilt from (files, split, seq_length, seed, num_samples) in numpy at start-up;
nothing is cached on disk.
"""
from __future__ import annotations

import os

import numpy as np

from megatron_galvatron.data.errors import DataError, sample_index
from megatron_galvatron.data.indexed_dataset import IndexedDataset

SPLIT_NAMES = ("train", "valid", "test")


def parse_data_path(data_path: list[str]) -> list[tuple[float, str]]:
    """Megatron's `--data-path P` or `--data-path W1 P1 W2 P2 ...` -> [(weight, prefix), ...]."""
    if not data_path:
        raise DataError("--data-path is empty; give a prefix P (P.bin/P.idx) or weighted pairs W1 P1 W2 P2 ...")
    if len(data_path) == 1:
        return [(1.0, _strip_suffix(data_path[0]))]
    if len(data_path) % 2:
        raise DataError(f"--data-path with {len(data_path)} entries: expected one prefix or weight/prefix pairs "
                        f"W1 P1 W2 P2 ...")
    pairs = []
    for w, p in zip(data_path[0::2], data_path[1::2]):
        try:
            weight = float(w)
        except ValueError:
            raise DataError(f"--data-path: {w!r} should be a weight before prefix {p!r} (form: W1 P1 W2 P2 ...)")
        if not weight >= 0 or weight == float("inf"):
            raise DataError(f"--data-path: weight {w} of {p} must be a finite number >= 0")
        pairs.append((weight, _strip_suffix(p)))
    if sum(w for w, _ in pairs) <= 0:
        raise DataError("--data-path: all weights are zero")
    return pairs


def _strip_suffix(path: str) -> str:
    # a prefix given with its .bin or .idx suffix is an easy slip; accept it when the pair exists
    for suffix in (".bin", ".idx"):
        if path.endswith(suffix):
            prefix = path[: -len(suffix)]
            if os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx"):
                return prefix
    return path


def parse_split(split: str) -> list[float]:
    """'949,50,1' (or '949/50/1', '0.9,0.1') -> three normalized weights, missing ones zero."""
    parts = [s.strip() for s in split.replace("/", ",").split(",")]
    try:
        weights = [float(s) for s in parts]
    except ValueError:
        raise DataError(f"--split {split!r}: expected up to three numbers like 949,50,1")
    if len(weights) > 3 or any(not (w >= 0) or w == float("inf") for w in weights) or sum(weights) <= 0:
        raise DataError(f"--split {split!r}: expected up to three finite non-negative weights "
                        f"(train,valid,test) with a positive sum, like 949,50,1")
    weights += [0.0] * (3 - len(weights))
    total = sum(weights)
    return [w / total for w in weights]


def split_ranges(weights: list[float], num_documents: int) -> list[tuple[int, int]]:
    """Contiguous document ranges [start, stop), one per weight, covering all documents."""
    bounds = [0]
    acc = 0.0
    for w in weights:
        acc += w
        bounds.append(min(num_documents, int(round(acc * num_documents))))
    bounds[-1] = num_documents
    return [(bounds[i], bounds[i + 1]) for i in range(len(weights))]


def _seed_entropy(seed) -> list[int]:
    seeds = seed if isinstance(seed, (tuple, list)) else (seed,)
    return [int(s) % 2**64 for s in seeds]


def epochs_needed(num_samples: int, seq_length: int, tokens_per_epoch: int) -> int:
    """Smallest E with floor((E*T - 1) / L) >= num_samples: the extra token is the last label."""
    return -(-(num_samples * seq_length + 1) // tokens_per_epoch)


class PackedSamples:
    """Sequences `sequence_order` of `indexed` laid back to back; item j is stream tokens
    [j*L, j*L + L + 1) as int64, for every j whose window fits the stream."""

    def __init__(self, indexed: IndexedDataset, sequence_order: np.ndarray, seq_length: int):
        self.indexed = indexed
        pos_dtype = np.int32 if len(sequence_order) < 2**31 else np.int64
        self.sequence_order = np.asarray(sequence_order).astype(pos_dtype)
        self._lengths = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        stream_ends = np.cumsum(self._lengths[self.sequence_order])
        stream_starts = stream_ends - self._lengths[self.sequence_order]
        total = int(stream_ends[-1]) if len(stream_ends) else 0
        self._num = max(0, (total - 1) // seq_length)
        # one extra start: sample j's last token is sample j+1's first
        sample_starts = np.arange(self._num + 1, dtype=np.int64) * seq_length
        # side='right' lands a start that falls on a boundary in the next non-empty sequence
        pos = np.searchsorted(stream_starts, sample_starts, side="right") - 1
        self._sample_pos = pos.astype(pos_dtype)
        self._sample_offset = (sample_starts - stream_starts[pos]).astype(np.int32)

    def __len__(self) -> int:
        return self._num

    def __getitem__(self, j: int) -> np.ndarray:
        p0, p1 = int(self._sample_pos[j]), int(self._sample_pos[j + 1])
        seqs = self.sequence_order[p0:p1 + 1]
        offsets = self.indexed.token_offsets
        starts = offsets[seqs]
        ends = starts + self._lengths[seqs]
        starts[0] += int(self._sample_offset[j])
        ends[-1] = offsets[seqs[-1]] + int(self._sample_offset[j + 1]) + 1
        flat = self.indexed.tokens
        if len(seqs) == 1:
            return flat[starts[0]:ends[0]].astype(np.int64)
        return np.concatenate([flat[a:b] for a, b in zip(starts.tolist(), ends.tolist())]).astype(np.int64)


class GPTDataset:
    """Samples of seq_length + 1 tokens (int64) packed from documents [start, stop) of `indexed`.

    len() is num_samples. Exposed for inspection: sequence_order (sequence ids in stream order,
    all epochs), tokens_per_epoch, num_epochs, shuffle_index (sample -> stream sample number).
    seed may be an int or a tuple of ints; equal seeds give equal datasets.
    """

    def __init__(self, indexed: IndexedDataset, documents: tuple[int, int], seq_length: int,
                 num_samples: int, seed, name: str = ""):
        if seq_length < 1:
            raise DataError(f"seq_length must be >= 1, got {seq_length}")
        if num_samples < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        self.indexed = indexed
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.name = name or indexed.path_prefix
        lo, hi = documents
        if not 0 <= lo < hi <= indexed.num_documents:
            raise DataError(f"{self.name}: document range [{lo}, {hi}) is empty or outside the "
                            f"{indexed.num_documents} documents")
        doc_idx = np.asarray(indexed.document_indices, dtype=np.int64)
        lengths = np.asarray(indexed.sequence_lengths, dtype=np.int64)
        self.tokens_per_epoch = int(lengths[doc_idx[lo]:doc_idx[hi]].sum())
        if self.tokens_per_epoch == 0:
            raise DataError(f"{self.name}: documents [{lo}, {hi}) hold no tokens")
        self.num_epochs = epochs_needed(self.num_samples, self.seq_length, self.tokens_per_epoch)
        entropy = _seed_entropy(seed)

        order = np.concatenate([
            self._epoch_sequence_order(doc_idx, lo, hi, np.random.default_rng(entropy + [0, e]))
            for e in range(self.num_epochs)
        ])
        self.packed = PackedSamples(indexed, order, self.seq_length)
        self.sequence_order = self.packed.sequence_order
        num_built = len(self.packed)

        # shuffle within each epoch's samples (by start token), epochs in order
        parts = []
        for e in range(self.num_epochs):
            b0 = min(num_built, -(-e * self.tokens_per_epoch // self.seq_length))
            b1 = min(num_built, -(-(e + 1) * self.tokens_per_epoch // self.seq_length))
            rng = np.random.default_rng(entropy + [1, e])
            parts.append(b0 + rng.permutation(b1 - b0))
        self.shuffle_index = np.concatenate(parts)[: self.num_samples].astype(self.sequence_order.dtype)

    @staticmethod
    def _epoch_sequence_order(doc_idx, lo, hi, rng) -> np.ndarray:
        docs = lo + rng.permutation(hi - lo)
        first = doc_idx[docs]
        counts = doc_idx[docs + 1] - first
        if np.all(counts == 1):
            return first
        # sequences of each document stay together and in order
        before = np.cumsum(counts) - counts
        return np.repeat(first - before, counts) + np.arange(int(counts.sum()), dtype=np.int64)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i) -> np.ndarray:
        return self.packed[int(self.shuffle_index[sample_index(i, self.num_samples)])]


def blending_indices(weights, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic interleaving: (dataset of each sample, its sample number within that dataset).

    Dataset d's k-th sample is placed at ideal time (k + 1/2) / w_d and samples are taken in time
    order, so every prefix of the blend holds each dataset within about one sample of its share.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or np.any(~(w >= 0)) or w.sum() <= 0:
        raise DataError(f"blend weights {list(weights)} must be non-negative with a positive sum")
    w = w / w.sum()
    times, owners, ranks = [], [], []
    for d, wd in enumerate(w):
        if wd == 0:
            continue
        count = int(np.ceil((num_samples + len(w) / 2) * wd)) + 1
        k = np.arange(count, dtype=np.int64)
        times.append((k + 0.5) / wd)
        owners.append(np.full(count, d, dtype=np.int64))
        ranks.append(k)
    times, owners, ranks = np.concatenate(times), np.concatenate(owners), np.concatenate(ranks)
    order = np.lexsort((owners, times))[:num_samples]  # ties go to the lower dataset index
    index_dtype = np.uint8 if len(w) <= 256 else np.int32
    return owners[order].astype(index_dtype), ranks[order]


class BlendedDataset:
    """num_samples samples drawn from `datasets` in proportion to `weights` (see blending_indices)."""

    def __init__(self, datasets, weights, num_samples: int, indices=None):
        if len(datasets) != len(weights):
            raise DataError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = list(datasets)
        self.weights = list(weights)
        if indices is None:
            indices = blending_indices(weights, num_samples)
        self.dataset_index, self.dataset_sample_index = indices
        counts = np.bincount(self.dataset_index, minlength=len(datasets))
        for d, (ds, c) in enumerate(zip(self.datasets, counts)):
            if c and (ds is None or len(ds) < c):
                raise DataError(f"blended dataset {d} has {0 if ds is None else len(ds)} samples, "
                                f"the blend needs {c}")

    def __len__(self) -> int:
        return len(self.dataset_index)

    def __getitem__(self, i) -> np.ndarray:
        d = int(self.dataset_index[i])
        return self.datasets[d][int(self.dataset_sample_index[i])]


DATA_ORDERS = ("epochs", "megatron")


def build_train_valid_test_datasets(data_path: list[str], split: str, seq_length: int, seed: int,
                                    num_samples: tuple[int, int, int], order: str = "epochs"):
    """(train, valid, test), each None (zero samples requested, or a split with no documents)
    or a dataset whose items are int64 arrays of seq_length + 1 tokens.

    order "epochs" is this module's order; "megatron" is megatron-core's (see megatron_order)."""
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise DataError(f"num_samples must be three non-negative counts (train, valid, test), got {num_samples}")
    if order not in DATA_ORDERS:
        raise DataError(f"--data-order {order!r}: choose one of {', '.join(DATA_ORDERS)}")
    pairs = parse_data_path(list(data_path))
    split_weights = parse_split(split)
    pairs = [(w, p) for w, p in pairs if w > 0]
    if order == "megatron":
        from megatron_galvatron.data.megatron_order import build_megatron_order_datasets
        return build_megatron_order_datasets(pairs, len(data_path) > 1, split, seq_length, int(seed), num_samples)
    indexed = [IndexedDataset(p) for _, p in pairs]
    ranges = [split_ranges(split_weights, ds.num_documents) for ds in indexed]

    out = []
    for s, name in enumerate(SPLIT_NAMES):
        n = int(num_samples[s])
        if n == 0 or split_weights[s] == 0:
            out.append(None)
            continue
        empty = [p for (_, p), r in zip(pairs, ranges) if r[s][0] == r[s][1]]
        if len(empty) == len(pairs):
            out.append(None)
            continue
        if empty:
            raise DataError(f"--split {split}: the {name} split of {empty[0]} has no documents; "
                            f"give it more documents or a larger {name} weight")
        if len(pairs) == 1:
            out.append(GPTDataset(indexed[0], ranges[0][s], seq_length, n, (seed, s, 0),
                                  name=f"{pairs[0][1]} ({name})"))
            continue
        weights = [w for w, _ in pairs]
        indices = blending_indices(weights, n)
        counts = np.bincount(indices[0], minlength=len(pairs))
        parts = [
            GPTDataset(ds, r[s], seq_length, int(c), (seed, s, d), name=f"{p} ({name})") if c else None
            for d, ((_, p), ds, r, c) in enumerate(zip(pairs, indexed, ranges, counts))
        ]
        out.append(BlendedDataset(parts, weights, n, indices=indices))
    return tuple(out)
