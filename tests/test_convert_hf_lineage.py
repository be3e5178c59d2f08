"""What a Hugging Face import carries through training to the export: config.json's every field
(a GPT-2 with bos/eos 298/299 keeps them, a Qwen2 its RoPE and layer fields) after a fine-tune
and a resume, each saving, and the tokenizer files, from the imported folder or from the run's
tokenizer flags, which transformers then loads from the exported folder."""
import importlib.util
import json
import os
import shutil

import pytest
import torch

from megatron_galvatron.checkpoint.architecture import model_flags
from megatron_galvatron.convert.hf import hf_to_ours, ours_to_hf
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import save_checkpoint, setup, train_step
from tests.pretrain_in_process import pretrain_in_process

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="needs Hugging Face transformers (pip install transformers)")

VOCAB = 300
TRAIN = ["--seq-length", "8", "--mock-data", "--global-batch-size", "2", "--make-vocab-size-divisible-by", "4",
         "--lr", "1e-3"]


def _tokenizer(d):
    """A byte-level BPE saved as transformers does (tokenizer.json, tokenizer_config.json) into d,
    and as GPT-2's vocab.json + merges.txt into d/bpe."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20,
                            trainers.BpeTrainer(vocab_size=VOCAB - 2, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(d)
    os.makedirs(os.path.join(d, "bpe"))
    tok.model.save(os.path.join(d, "bpe"))


def _hf_folder(name, d):
    import transformers
    torch.manual_seed(0)
    if name == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=16,
                                         bos_token_id=298, eos_token_id=299, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, layer_norm_epsilon=1e-4)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                          max_position_embeddings=16, rope_theta=5000.0, bos_token_id=298,
                                          eos_token_id=299, tie_word_embeddings=False, sliding_window=None)
        model = transformers.Qwen2ForCausalLM(config)
    model.save_pretrained(d)
    _tokenizer(d)
    return model


def _config(d):
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f)


def _pretrain(argv):
    rc, out, err = pretrain_in_process(argv)
    assert rc in (0, None), err
    return out


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_fields_and_tokenizer_survive_finetune_resume_and_export(tmp_path, name):
    import transformers
    hf_dir, imported, run = str(tmp_path / "hf"), str(tmp_path / "imported"), str(tmp_path / "run")
    original = _hf_folder(name, hf_dir)
    _, cfg = hf_to_ours(hf_dir, imported)
    flags = model_flags(cfg).split() + TRAIN
    _pretrain(flags + ["--load", imported, "--finetune", "--save", run, "--train-iters", "2"])
    _pretrain(flags + ["--load", run, "--save", run, "--train-iters", "3"])  # a resume, saving again
    with open(os.path.join(run, "latest")) as f:
        assert f.read().strip().endswith("iter_0000003")
    out = str(tmp_path / "exported")
    ours_to_hf(run, out)

    before, after = _config(hf_dir), _config(out)
    for key, value in before.items():
        if key != "transformers_version":
            assert after[key] == value, (key, after[key], value)
    back = type(original).from_pretrained(out)
    assert (back.config.bos_token_id, back.config.eos_token_id) == (298, 299)
    assert back.generation_config.eos_token_id == 299
    trained = back.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in original.state_dict().items())  # it did train

    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        with open(os.path.join(hf_dir, f), "rb") as a, open(os.path.join(out, f), "rb") as b:
            assert a.read() == b.read(), f
    text = "the lazy fox"
    assert transformers.AutoTokenizer.from_pretrained(out)(text).input_ids == \
        transformers.AutoTokenizer.from_pretrained(hf_dir)(text).input_ids


def test_run_tokenizer_flags_replace_the_imported_tokenizer(tmp_path, capsys):
    import transformers
    hf_dir, imported, run = str(tmp_path / "hf"), str(tmp_path / "imported"), str(tmp_path / "run")
    _hf_folder("gpt2", hf_dir)
    _, cfg = hf_to_ours(hf_dir, imported)
    bpe = str(tmp_path / "bpe")
    shutil.copytree(os.path.join(hf_dir, "bpe"), bpe)
    args = build_parser().parse_args(model_flags(cfg).split() + TRAIN + ["--load", imported, "--finetune",
                                                                          "--save", run, "--train-iters", "1"])
    # Megatron's tokenizer flags, as the command line gives them
    args.tokenizer_type, args.tokenizer_model = "GPT2BPETokenizer", None
    args.vocab_file, args.merge_file = os.path.join(bpe, "vocab.json"), os.path.join(bpe, "merges.txt")
    tr = setup(args)
    train_step(tr)
    save_checkpoint(tr)
    weights = gather_model(tr.stage)

    out = str(tmp_path / "exported")
    ours_to_hf(run, out)
    assert sorted(f for f in os.listdir(out) if not f.endswith(".safetensors")) == \
        ["config.json", "merges.txt", "vocab.json"]
    tok = transformers.GPT2TokenizerFast.from_pretrained(out)
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(hf_dir, "tokenizer.json"))
    assert tok("the quick dog").input_ids == ref("the quick dog").input_ids
    back = transformers.GPT2LMHeadModel.from_pretrained(out).state_dict()
    assert torch.equal(back["transformer.wte.weight"], weights["vocab.word_embeddings.weight"])

    os.remove(os.path.join(bpe, "merges.txt"))  # moved since the run: the export goes on, naming it
    ours_to_hf(run, str(tmp_path / "again"))
    assert "merges.txt is not in the export" in capsys.readouterr().err
    assert os.listdir(tmp_path / "again").count("vocab.json") == 1
    assert "merges.txt" not in os.listdir(tmp_path / "again")


def test_missing_tokenizer_flag_file_is_one_line(tmp_path):
    from megatron_galvatron.checkpoint.tokenizer_files import from_flags
    from megatron_galvatron.errors import UserError
    with pytest.raises(UserError, match=r"tokenizer file .*nothing.model \(tokenizer.model\) not found"):
        from_flags("SentencePieceTokenizer", str(tmp_path / "nothing.model"), None, None)
