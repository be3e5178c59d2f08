"""The .bin/.idx reader and writer against Megatron-LM's published layout, and corrupt files."""
import pickle
import struct

import numpy as np
import pytest

from megatron_galvatron.data.errors import DataError
from megatron_galvatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter

# Megatron-LM's dtype codes, written out independently of the module under test
CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}


def write_megatron_by_hand(prefix, documents, dtype, modes=False):
    """documents: list of documents, each a list of sequences (lists of ints)."""
    dtype = np.dtype(dtype)
    lengths, pointers, doc_idx, ptr, blob = [], [], [0], 0, b""
    for doc in documents:
        for seq in doc:
            data = np.array(seq, dtype=dtype).tobytes()
            lengths.append(len(seq))
            pointers.append(ptr)
            ptr += len(data)
            blob += data
        doc_idx.append(len(lengths))
    with open(prefix + ".bin", "wb") as f:
        f.write(blob)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", CODES[dtype.type]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(b"".join(struct.pack("<i", n) for n in lengths))
        f.write(b"".join(struct.pack("<q", p) for p in pointers))
        f.write(b"".join(struct.pack("<q", d) for d in doc_idx))
        if modes:
            f.write(bytes(len(lengths)))


DOCS = [[[5, 6, 7]], [], [[1], [2, 3], []], [[65000, 0, 42, 9]]]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_reads_hand_written_megatron_file(tmp_path, dtype):
    prefix = str(tmp_path / "m")
    write_megatron_by_hand(prefix, DOCS, dtype)
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype)
    assert len(ds) == 5 and ds.num_documents == 4
    seqs = [s for doc in DOCS for s in doc]
    for i, seq in enumerate(seqs):
        assert ds[i].tolist() == seq
    assert ds.get(4, 1, 2).tolist() == [0, 42]
    assert [ds.document(d).tolist() for d in range(4)] == [sum(doc, []) for doc in DOCS]
    assert ds.document_indices.tolist() == [0, 1, 1, 4, 5]


def test_reads_multimodal_index_with_sequence_modes(tmp_path):
    prefix = str(tmp_path / "mm")
    write_megatron_by_hand(prefix, DOCS, np.int32, modes=True)
    assert IndexedDataset(prefix)[4].tolist() == [65000, 0, 42, 9]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_writer_is_byte_identical_to_megatron_layout(tmp_path, dtype):
    ref, ours = str(tmp_path / "ref"), str(tmp_path / "ours")
    write_megatron_by_hand(ref, DOCS, dtype)
    with IndexedDatasetWriter(ours, dtype) as w:
        for doc in DOCS:
            for seq in doc:
                w.add_sequence(seq)
            w.end_document()
    for ext in (".bin", ".idx"):
        assert open(ref + ext, "rb").read() == open(ours + ext, "rb").read()


def test_empty_dataset_and_pickle(tmp_path):
    prefix = str(tmp_path / "e")
    with IndexedDatasetWriter(prefix, np.uint16):
        pass
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_documents == 0
    write_megatron_by_hand(prefix, DOCS, np.uint16)
    ds = pickle.loads(pickle.dumps(IndexedDataset(prefix)))
    assert ds[4].tolist() == [65000, 0, 42, 9]


def test_writer_rejects_ids_outside_dtype_and_leaves_no_files(tmp_path):
    prefix = str(tmp_path / "w")
    with pytest.raises(DataError, match="does not fit"):
        with IndexedDatasetWriter(prefix, np.uint16) as w:
            w.add_document([1, 70000])
    assert list(tmp_path.iterdir()) == []


def _corrupt(tmp_path, what):
    prefix = str(tmp_path / "c")
    write_megatron_by_hand(prefix, DOCS, np.int32)
    idx = bytearray(open(prefix + ".idx", "rb").read())
    bin_ = bytearray(open(prefix + ".bin", "rb").read())
    if what == "magic":
        idx[0:4] = b"JUNK"
    elif what == "version":
        idx[9:17] = struct.pack("<Q", 2)
    elif what == "dtype":
        idx[17] = 9
    elif what == "short_header":
        idx = idx[:20]
    elif what == "truncated_idx":
        idx = idx[:-5]
    elif what == "trailing_idx":
        idx += b"\x00" * 3
    elif what == "pointers":
        idx[34 + 4 * 5 + 8 * 2: 34 + 4 * 5 + 8 * 3] = struct.pack("<q", 999)
    elif what == "doc_indices":
        idx[-8:] = struct.pack("<q", 3)
    elif what == "truncated_bin":
        bin_ = bin_[:-4]
    elif what == "long_bin":
        bin_ += b"\x00" * 4
    open(prefix + ".idx", "wb").write(bytes(idx))
    open(prefix + ".bin", "wb").write(bytes(bin_))
    return prefix


@pytest.mark.parametrize("what,file,words", [
    ("magic", ".idx", "bad magic"),
    ("version", ".idx", "version 2"),
    ("dtype", ".idx", "dtype code 9"),
    ("short_header", ".idx", "truncated"),
    ("truncated_idx", ".idx", "truncated"),
    ("trailing_idx", ".idx", "bytes follow"),
    ("pointers", ".idx", "sequence 2 starts at byte 999"),
    ("doc_indices", ".idx", "document indices"),
    ("truncated_bin", ".bin", "truncated"),
    ("long_bin", ".bin", "do not belong together"),
])
def test_corrupt_files_raise_one_line_data_error(tmp_path, what, file, words):
    prefix = _corrupt(tmp_path, what)
    with pytest.raises(DataError) as e:
        IndexedDataset(prefix)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and msg.startswith(prefix + file), msg


def test_missing_bin_names_the_file(tmp_path):
    prefix = str(tmp_path / "m")
    write_megatron_by_hand(prefix, DOCS, np.int32)
    (tmp_path / "m.bin").unlink()
    with pytest.raises(DataError, match=r"m\.bin not found"):
        IndexedDataset(prefix)
