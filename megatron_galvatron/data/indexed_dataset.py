"""Megatron-LM's token file format: a flat `.bin` of token ids plus an `.idx` that cuts it up.

The `.idx` layout (little-endian, no padding) is byte-for-byte Megatron-LM's, so files made by
either project load in the other:

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    uint64    version, always 1
    uint8     dtype code of the .bin (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
              7 float32, 8 uint16)
    uint64    S, the number of sequences
    uint64    D, the number of document indices (documents + 1)
    int32[S]  sequence lengths, in tokens
    int64[S]  sequence byte offsets into the .bin
    int64[D]  document indices: document i is sequences [doc[i], doc[i+1]); doc[0] = 0, doc[-1] = S
    int8[S]   (multimodal files only) sequence modes; accepted and ignored

A document is usually one sequence; Megatron's sentence splitting makes several. Both files are
memory-mapped, so opening a dataset of any size costs only the index checks.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from megatron_galvatron.data.errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, S, D: 34 bytes

DTYPE_BY_CODE = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    6: np.dtype(np.float64),
    7: np.dtype(np.float32),
    8: np.dtype(np.uint16),
}
CODE_BY_DTYPE = {dt: code for code, dt in DTYPE_BY_CODE.items()}


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Megatron's choice: uint16 below 65500 ids, else int32 (halves the file for small vocabs)."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


class IndexedDatasetWriter:
    """Writes `prefix.bin` and `prefix.idx`; use as a context manager.

    Both files are written under temporary names and renamed only when the block exits cleanly,
    so an interrupted run never leaves a pair that looks complete.
    """

    def __init__(self, prefix: str, dtype):
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_BY_DTYPE:
            raise DataError(f"{prefix}: dtype {self.dtype} has no Megatron dtype code; "
                            f"use one of {sorted(str(d) for d in CODE_BY_DTYPE)}")
        self._tmp_suffix = f".tmp{os.getpid()}"
        self._lo, self._hi = (
            (np.iinfo(self.dtype).min, np.iinfo(self.dtype).max) if self.dtype.kind in "iu" else (None, None)
        )
        self.sequence_lengths: list[int] = []
        self.document_indices: list[int] = [0]
        self._bin = None

    def __enter__(self):
        directory = os.path.dirname(os.path.abspath(self.prefix))
        if not os.path.isdir(directory):
            raise DataError(f"{self.prefix}: output directory {directory} does not exist")
        self._bin = open(bin_path(self.prefix) + self._tmp_suffix, "wb")
        return self

    def add_sequence(self, tokens) -> None:
        """Append one sequence to the current document."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise DataError(f"{self.prefix}: a sequence must be 1-D, got shape {arr.shape}")
        if arr.size and self._lo is not None:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < self._lo or hi > self._hi:
                bad = lo if lo < self._lo else hi
                raise DataError(f"{self.prefix}: token id {bad} does not fit the file dtype {self.dtype}; "
                                f"the tokenizer's vocab_size is too small for its ids")
        if arr.size >= 2**31:
            raise DataError(f"{self.prefix}: a sequence of {arr.size} tokens exceeds the format's int32 length")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self.sequence_lengths.append(int(arr.size))

    def end_document(self) -> None:
        self.document_indices.append(len(self.sequence_lengths))

    def add_document(self, tokens) -> None:
        """One document of one sequence; an empty document gets no sequence, as in Megatron."""
        if len(tokens):
            self.add_sequence(tokens)
        self.end_document()

    def __exit__(self, exc_type, exc, tb):
        self._bin.close()
        tmp_bin = bin_path(self.prefix) + self._tmp_suffix
        tmp_idx = idx_path(self.prefix) + self._tmp_suffix
        if exc_type is not None:
            for p in (tmp_bin, tmp_idx):
                if os.path.exists(p):
                    os.remove(p)
            return None
        write_index(tmp_idx, self.dtype, self.sequence_lengths, self.document_indices)
        os.replace(tmp_bin, bin_path(self.prefix))
        os.replace(tmp_idx, idx_path(self.prefix))
        return None


def write_index(path: str, dtype, sequence_lengths, document_indices) -> None:
    dtype = np.dtype(dtype)
    lengths = np.asarray(sequence_lengths, dtype=np.int64)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1] * dtype.itemsize, out=pointers[1:])
    with open(path, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, CODE_BY_DTYPE[dtype], len(lengths), len(document_indices)))
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.asarray(document_indices, dtype="<i8").tobytes())


class IndexedDataset:
    """Memory-mapped reader; `ds[i]` is sequence i as a read-only numpy array of the file dtype.

    validate=True checks the whole index and the .bin size once, so a corrupt or mismatched pair
    fails here with a DataError naming the file rather than later as garbage tokens.
    """

    def __init__(self, prefix: str, validate: bool = True):
        self.path_prefix = prefix
        self._validate = validate
        self._open(validate)

    def _open(self, validate: bool) -> None:
        ipath, bpath = idx_path(self.path_prefix), bin_path(self.path_prefix)
        for p in (ipath, bpath):
            if not os.path.isfile(p):
                raise DataError(f"{p} not found; an indexed dataset is a prefix P with P.bin and P.idx "
                                f"(tools/preprocess_data.py writes them)")
        size = os.path.getsize(ipath)
        if size < _HEADER.size:
            raise DataError(f"{ipath}: truncated: {size} bytes is shorter than the {_HEADER.size}-byte header")
        with open(ipath, "rb") as f:
            magic, version, code, n_seq, n_doc = _HEADER.unpack(f.read(_HEADER.size))
        if magic != MAGIC:
            raise DataError(f"{ipath}: bad magic {magic!r}; not a Megatron indexed dataset index")
        if version != VERSION:
            raise DataError(f"{ipath}: unsupported index version {version}; only version {VERSION} exists")
        if code not in DTYPE_BY_CODE:
            raise DataError(f"{ipath}: unknown dtype code {code}; valid codes are 1-8")
        self.dtype = DTYPE_BY_CODE[code]
        expected = _HEADER.size + 12 * n_seq + 8 * n_doc
        if size < expected:
            raise DataError(f"{ipath}: truncated: its header declares {n_seq} sequences and {n_doc} document "
                            f"indices ({expected} bytes) but the file has {size} bytes")
        if size not in (expected, expected + n_seq):  # + n_seq: Megatron's multimodal sequence modes
            raise DataError(f"{ipath}: {size - expected} bytes follow the document indices; "
                            f"the header's counts ({n_seq} sequences, {n_doc} document indices) are wrong")
        if n_doc < 1:
            raise DataError(f"{ipath}: corrupt: zero document indices (even an empty dataset has one)")

        buf = np.memmap(ipath, dtype=np.uint8, mode="r")
        off = _HEADER.size
        self.sequence_lengths = np.frombuffer(buf, dtype="<i4", count=n_seq, offset=off)
        off += 4 * n_seq
        self.sequence_pointers = np.frombuffer(buf, dtype="<i8", count=n_seq, offset=off)
        off += 8 * n_seq
        self.document_indices = np.frombuffer(buf, dtype="<i8", count=n_doc, offset=off)
        self._idx_buf = buf

        if validate:
            self._check_index(ipath)
        need = self._bin_bytes_needed()
        bsize = os.path.getsize(bpath)
        if bsize < need:
            raise DataError(f"{bpath}: truncated: its index needs {need} bytes but the file has {bsize}")
        if bsize != need:
            raise DataError(f"{bpath}: {bsize} bytes but {ipath} describes {need}; "
                            f"the .bin and .idx do not belong together")
        self._token_offsets = None
        # a plain ndarray view over the map: np.memmap's per-slice bookkeeping dominates small reads
        self._bin = (np.memmap(bpath, dtype=self.dtype, mode="r").view(np.ndarray) if bsize
                     else np.empty(0, dtype=self.dtype))

    def _check_index(self, ipath: str) -> None:
        lengths, pointers, docs = self.sequence_lengths, self.sequence_pointers, self.document_indices
        n = len(lengths)
        if n and int(lengths.min()) < 0:
            i = int(np.argmax(lengths < 0))
            raise DataError(f"{ipath}: corrupt: sequence {i} has negative length {int(lengths[i])}")
        expected = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=expected[1:])
        bad = np.flatnonzero(pointers != expected)
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{ipath}: corrupt: sequence {i} starts at byte {int(pointers[i])}, "
                            f"but the lengths before it put it at {int(expected[i])}")
        if docs[0] != 0 or docs[-1] != n:
            raise DataError(f"{ipath}: corrupt: document indices run from {int(docs[0])} to {int(docs[-1])}, "
                            f"expected 0 to {n} (the sequence count)")
        if len(docs) > 1 and np.any(np.diff(docs) < 0):
            i = int(np.argmax(np.diff(docs) < 0))
            raise DataError(f"{ipath}: corrupt: document indices decrease at document {i}")

    def _bin_bytes_needed(self) -> int:
        if not len(self.sequence_lengths):
            return 0
        return int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize

    def __getstate__(self):
        # the memory maps are reopened by path rather than copied into the pickle
        return {"path_prefix": self.path_prefix}

    def __setstate__(self, state):
        self.path_prefix = state["path_prefix"]
        self._validate = False
        self._open(validate=False)

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    @property
    def tokens(self) -> np.ndarray:
        """The whole .bin as one flat read-only array."""
        return self._bin

    @property
    def token_offsets(self) -> np.ndarray:
        """Where each sequence starts in `tokens` (int64, computed on first use)."""
        if self._token_offsets is None:
            self._token_offsets = np.asarray(self.sequence_pointers, dtype=np.int64) // self.dtype.itemsize
        return self._token_offsets

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    def get(self, i: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence i."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        i = int(i) % n
        seq_len = int(self.sequence_lengths[i])
        if length is None:
            length = seq_len - offset
        if offset < 0 or length < 0 or offset + length > seq_len:
            raise IndexError(f"tokens [{offset}, {offset + length}) out of range for sequence {i} of {seq_len}")
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start:start + length]

    def document(self, d: int) -> np.ndarray:
        """All tokens of document d (its sequences concatenated)."""
        lo, hi = int(self.document_indices[d]), int(self.document_indices[d + 1])
        if lo == hi:
            return self._bin[0:0]
        start = int(self.sequence_pointers[lo]) // self.dtype.itemsize
        stop = int(self.sequence_pointers[hi - 1]) // self.dtype.itemsize + int(self.sequence_lengths[hi - 1])
        return self._bin[start:stop]
