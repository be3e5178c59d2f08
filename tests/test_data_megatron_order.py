"""--data-order megatron gives megatron-core's GPTDataset samples, in its order, sample for sample:
the reference is megatron-core itself, built as a Megatron user builds it (GPTDatasetConfig and
BlendedMegatronDatasetBuilder) on the same .bin/.idx files."""
import numpy as np
import pytest

from megatron_galvatron.data.gpt_dataset import build_train_valid_test_datasets
from megatron_galvatron.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter
from megatron_galvatron.data.megatron_order import MegatronOrderGPTDataset

try:
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer
except ImportError:
    pytest.skip("megatron-core is not installed: pip install --no-deps megatron-core==0.16.1 packaging",
                allow_module_level=True)

VOCAB = 5000


def write_corpus(prefix, num_docs, seed):
    """Documents of random lengths (some empty, some of several sequences) with random ids."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for d in range(num_docs):
            n = 0 if d % 23 == 7 else int(rng.integers(1, 90))
            toks = rng.integers(0, VOCAB - 1, n)
            if d % 5 == 2 and n > 3:
                w.add_sequence(toks[:3])
                w.add_sequence(toks[3:])
                w.end_document()
            else:
                w.add_document(toks)


def megatron_samples(data_path, split, seq_length, seed, sizes):
    # no path_to_cache: Megatron then keeps its index files next to the data (in tmp_path)
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=(data_path, None) if len(data_path) == 1
        else ([data_path[1]], [float(data_path[0])]), split=split,
        tokenizer=NullTokenizer(VOCAB), reset_position_ids=False, reset_attention_mask=False,
        eod_mask_loss=False, create_attention_mask=False)
    datasets = BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config).build()

    def text(ds, i):
        item = ds[i]
        return np.concatenate([item["tokens"].numpy(), item["labels"].numpy()[-1:]])
    return [None if ds is None else [text(ds, i) for i in range(n)] for ds, n in zip(datasets, sizes)]


@pytest.mark.parametrize("split,seq_length,seed,sizes,weighted", [
    ("90,8,2", 32, 1234, (600, 120, 40), False),    # several epochs in every split
    ("80,20,0", 17, 7, (800, 300, 0), False),       # no test split
    ("6,3,1", 64, 99, (150, 60, 30), True),         # "1.0 P": Megatron's blend of one, with surplus
    ("1", 8, 5, (700, 0, 0), False),                # all data in train
])
def test_same_samples_as_megatron_core(tmp_path, split, seq_length, seed, sizes, weighted):
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, 100 if split == "1" else 300, seed=seed)
    data_path = ["1.0", prefix] if weighted else [prefix]
    ref = megatron_samples(data_path, split, seq_length, seed, sizes)
    ours = build_train_valid_test_datasets(data_path, split, seq_length, seed, sizes, order="megatron")
    for name, r, o, n in zip(("train", "valid", "test"), ref, ours, sizes):
        if n == 0:
            assert o is None, name
            continue
        assert r is not None and o is not None and len(o) == n, name
        for i in range(n):
            assert np.array_equal(o[i], r[i]), f"{name} sample {i} differs from megatron-core"
    assert ours[0].num_epochs > 1  # the multi-epoch document and shuffle indices are exercised


def test_final_epoch_shuffled_apart_when_small(tmp_path):
    """Both branches of Megatron's final-epoch rule occur, and both match megatron-core."""
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, 120, seed=3)
    ix = IndexedDataset(prefix)
    per_epoch = (int(np.asarray(ix.sequence_lengths).sum()) - 1) // 16
    seen = set()
    for n in (2 * per_epoch + 3, 3 * per_epoch - 2):
        ds = MegatronOrderGPTDataset(ix, (0, len(ix)), 16, n, seed=11)
        seen.add(ds.separate_final_epoch)
        ref = megatron_samples([prefix], "1", 16, 11, (n, 0, 0))[0]
        assert all(np.array_equal(ds[i], ref[i]) for i in range(n))
    assert seen == {True, False}


def test_flag_reaches_the_training_data(tmp_path):
    """pretrain_gpt's --data-order megatron: the run reads Megatron's samples for its
    train_iters x global batch (and its eval formula), as a Megatron run with these flags would."""
    from megatron_galvatron.model.config import config_from_args
    from megatron_galvatron.training import arguments
    from megatron_galvatron.training.train import build_datasets

    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, 200, seed=2)
    args = arguments.build_parser().parse_args([
        "--num-layers", "2", "--hidden-size", "16", "--num-attention-heads", "2", "--seq-length", "16",
        "--vocab-size", str(VOCAB), "--train-iters", "30", "--global-batch-size", "8", "--seed", "77",
        "--data-path", prefix, "--split", "85,15,0", "--data-order", "megatron", "--eval-interval", "10",
        "--eval-iters", "2"])
    cfg = config_from_args(args)
    train, valid = build_datasets(arguments.training_config(args), cfg, arguments.build_plan(args, cfg, 1))
    sizes = (30 * 8, (30 // 10 + 1) * 2 * 8, 0)  # Megatron's train / valid sample counts
    ref = megatron_samples([prefix], "85,15,0", 16, 77, sizes)
    assert [train[i].tolist() for i in range(len(train))] == [r.tolist() for r in ref[0]]
    assert [valid[i].tolist() for i in range(len(valid))] == [r.tolist() for r in ref[1]]


def test_weighted_single_prefix_takes_megatron_surplus(tmp_path):
    """"1.0 P" asks for exactly one epoch's samples; Megatron's 0.5 % blend surplus makes it build
    two epochs (so other documents come first) where "P" builds one, and both match megatron-core."""
    prefix = str(tmp_path / "corpus")
    write_corpus(prefix, 150, seed=4)
    ix = IndexedDataset(prefix)
    n = (int(np.asarray(ix.sequence_lengths).sum()) - 1) // 16  # all of one epoch
    plain = build_train_valid_test_datasets([prefix], "1", 16, 3, (n, 0, 0), order="megatron")[0]
    weighted = build_train_valid_test_datasets(["1.0", prefix], "1", 16, 3, (n, 0, 0), order="megatron")[0]
    assert (plain.num_epochs, weighted.num_epochs) == (1, 2)
    for data_path, ours in ((["1.0", prefix], weighted), ([prefix], plain)):
        ref = megatron_samples(data_path, "1", 16, 3, (n, 0, 0))[0]
        assert all(np.array_equal(ours[i], ref[i]) for i in range(n))
    assert any(not np.array_equal(plain[i], weighted[i]) for i in range(n))
