"""Hugging Face <-> ours conversion against transformers itself: a random GPT2LMHeadModel and
LlamaForCausalLM (built here from a config, nothing downloaded) give the same logits and loss
as our model after conversion, in one process and under tp2 x pp2 on 4 gloo ranks; converting
back gives the original tensors; broken folders are one-line errors."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from megatron_galvatron.checkpoint.architecture import model_flags
from megatron_galvatron.convert.hf import hf_to_ours, ours_to_hf
from megatron_galvatron.pipeline.schedules import forward_only
from megatron_galvatron.plan import Plan, uniform
from megatron_galvatron.tensor_parallel.mappings import gather_from_tp
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import _forward_fn, _p2p, reduce_loss, setup
from tests.dist_utils import run_distributed

# Imported lazily: the spawned ranks import this module too and need only our code.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="needs Hugging Face transformers (pip install transformers)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, BATCH, VOCAB, LAYERS = 8, 2, 61, 4


def _randomize(model, seed):
    """Every weight (norms and biases too) far from its default, so no mapping slip hides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "norm.weight",
                                         "layernorm.weight")) else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _gpt2(**kw):
    import transformers
    cfg = transformers.GPT2Config(n_layer=LAYERS, n_embd=32, n_head=4, n_inner=64, vocab_size=VOCAB, n_positions=16,
                                  layer_norm_epsilon=1e-4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0, **kw)
    return _randomize(transformers.GPT2LMHeadModel(cfg), 1)


def _llama(layers=LAYERS, tie=False):
    import transformers
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                   max_position_embeddings=16, rms_norm_eps=1e-6, rope_theta=5000.0,
                                   tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0)
    return _randomize(transformers.LlamaForCausalLM(cfg), 2)


def _save_bin(model, d):
    """The pre-safetensors layout: config.json + pytorch_model.bin."""
    os.makedirs(d)
    model.config.save_pretrained(d)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(d, "pytorch_model.bin"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    gen = torch.Generator().manual_seed(3)
    seq = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    tokens, labels = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    out = {"tokens": tokens, "labels": labels, "base": base}
    for name, model in (("gpt2", _gpt2()), ("llama", _llama())):
        hf_dir = str(base / f"{name}_hf")
        if name == "gpt2":
            model.save_pretrained(hf_dir)                  # model.safetensors
        else:
            _save_bin(model, hf_dir)                       # pytorch_model.bin
        root = str(base / f"{name}_ours")
        _, cfg = hf_to_ours(hf_dir, root)
        with torch.no_grad():
            logits = model(input_ids=tokens).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)).item()
        out[name] = {"model": model, "hf_dir": hf_dir, "root": root, "logits": logits, "loss": loss,
                     "argv": model_flags(cfg).split() + ["--seq-length", str(SEQ), "--load", root, "--mock-data",
                                                         "--train-iters", "1", "--make-vocab-size-divisible-by", "4"]}
    return out


def _our_outputs(tr, tokens, labels):
    """(mean loss through the training forward, [batch, seq, vocab] logits) on the last stage."""
    stage, ps = tr.stage, tr.ps
    stage.eval()
    logits = []
    if ps.is_last_stage:  # also keep the (vocab-parallel) logits the loss is computed from
        head = stage.vocab.head
        stage.vocab.head = lambda x, y: logits.append(stage.vocab.logits(x)) or head(x, y)
    loss = forward_only(ps.is_last_stage, 1, _p2p(tr, torch.float32), partial(_forward_fn, tr, [(tokens, labels)]),
                        tr.device)
    loss = reduce_loss(tr, loss).item()
    if not ps.is_last_stage:
        return None, None
    full = gather_from_tp(logits[0], stage.vocab_groups.tp_group)
    return loss, full[..., :tr.cfg.vocab_size].transpose(0, 1)


def _run(rank, world, jobs, tokens, labels):
    out = []
    for argv, plan_dict in jobs:
        tr = setup(build_parser().parse_args(argv), Plan.from_dict(plan_dict).validate(world_size=world))
        out.append(_our_outputs(tr, tokens, labels))
    return out


def _check(name, got, ref):
    loss, logits = got
    assert (logits - ref["logits"]).abs().max().item() <= 1e-4, name
    assert abs(loss - ref["loss"]) <= 1e-4, (name, loss, ref["loss"])


def test_logits_and_loss_match_transformers_single_process(converted):
    for name in ("gpt2", "llama"):
        plan = uniform(1, LAYERS, global_bsz=BATCH, chunks=1)
        got = _run(0, 1, [(converted[name]["argv"], plan.to_dict())], converted["tokens"], converted["labels"])[0]
        _check(name, got, converted[name])


def test_logits_and_loss_match_transformers_tp2_pp2(converted):
    plan = uniform(4, LAYERS, pp_deg=2, tp=2, global_bsz=BATCH, chunks=1).to_dict()
    jobs = [(converted[name]["argv"], plan) for name in ("gpt2", "llama")]
    results = run_distributed(4, _run, jobs, converted["tokens"], converted["labels"])
    for k, name in enumerate(("gpt2", "llama")):
        for rank in (2, 3):  # both TP ranks of the last stage hold the gathered logits
            _check(name, results[rank][k], converted[name])


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_tied"])
def test_round_trip_gives_identical_tensors(converted, tmp_path, name):
    if name == "llama_tied":
        model = _llama(layers=1, tie=True)
        hf_dir = str(tmp_path / "tied_hf")
        model.save_pretrained(hf_dir)
        root = str(tmp_path / "tied_ours")
        hf_to_ours(hf_dir, root)
    else:
        model, root = converted[name]["model"], converted[name]["root"]
    out = str(tmp_path / "back")
    ours_to_hf(root, out)
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    back = type(model).from_pretrained(out).eval()
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32 and torch.equal(a[k], b[k]), k
    with torch.no_grad():
        assert torch.equal(model(input_ids=converted["tokens"]).logits, back(input_ids=converted["tokens"]).logits)


def test_sharded_export_loads(converted, tmp_path):
    import transformers
    out = str(tmp_path / "sharded")
    ours_to_hf(converted["llama"]["root"], out, shard_bytes=20_000)
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    back = transformers.LlamaForCausalLM.from_pretrained(out)
    for k, v in converted["llama"]["model"].state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


# --------------------------------------------------------------------------- errors

def _cli(argv, capsys):
    from tools.convert_checkpoint import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convert_checkpoint.py: error: "), err
    return lines[0]


def _broken_folders(converted, base):
    g = converted["gpt2"]["hf_dir"]
    cases = {}
    cases["no_config"] = (str(base / "empty"), "no config.json")
    os.makedirs(cases["no_config"][0])
    d = str(base / "bert")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "bert", "architectures": ["BertForMaskedLM"]}, f)
    cases["unknown_arch"] = (d, "not supported")
    d = str(base / "garbage")
    os.makedirs(d)
    shutil.copy(os.path.join(g, "config.json"), d)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + os.urandom(64))
    cases["corrupt_safetensors"] = (d, "not a valid safetensors file")
    d = str(base / "truncated")
    shutil.copytree(g, d)
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    cases["truncated_safetensors"] = (d, "not a valid safetensors file")
    d = str(base / "truncated_bin")
    shutil.copytree(converted["llama"]["hf_dir"], d)
    path = os.path.join(d, "pytorch_model.bin")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    cases["truncated_bin"] = (d, "not a readable PyTorch weights file")
    d = str(base / "wrong_shape")
    shutil.copytree(g, d)
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    c["n_inner"] = 80
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    cases["shape_mismatch"] = (d, "implies")
    return cases


def test_broken_hf_folders_are_one_line_errors(converted, tmp_path, capsys):
    for case, (d, words) in _broken_folders(converted, tmp_path).items():
        line = _cli(["hf-to-ours", "--hf-dir", d, "--save", str(tmp_path / f"out_{case}")], capsys)
        assert words in line, (case, line)
        out = tmp_path / f"out_{case}"  # nothing but the lock file that names the last writer
        assert not [e for e in os.listdir(out) if e != ".lock"] if os.path.exists(out) else True


def test_cli_process_exit_code_and_no_traceback(converted, tmp_path):
    d = tmp_path / "nothing"
    d.mkdir()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), "hf-to-ours",
                        "--hf-dir", str(d), "--save", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), "hf-to-ours",
                        "--hf-dir", converted["gpt2"]["hf_dir"], "--save", str(tmp_path / "ok")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--model-family gpt2" in r.stdout, r.stderr


def test_ours_to_hf_errors(converted, tmp_path, capsys):
    root = str(tmp_path / "ours")
    shutil.copytree(converted["gpt2"]["root"], root)
    nonempty = tmp_path / "taken"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("x")
    assert "not an empty directory" in _cli(["ours-to-hf", "--load", root, "--hf-dir", str(nonempty)], capsys)
    assert (nonempty / "keep.txt").read_text() == "x"
    shard = next(p for p in os.listdir(os.path.join(root, "iter_0000000")) if p.endswith(".safetensors"))
    with open(os.path.join(root, "iter_0000000", shard), "r+b") as f:
        f.truncate(100)
    assert "truncated or corrupt" in _cli(["ours-to-hf", "--load", root, "--hf-dir", str(tmp_path / "x")], capsys)
    assert not os.path.exists(tmp_path / "x")


def test_reshard_validates_plan_and_writes_copy(converted, tmp_path, capsys):
    from tools.convert_checkpoint import main
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    uniform(4, LAYERS, pp_deg=2, tp=2, global_bsz=4, chunks=2).save(str(good))
    uniform(3, LAYERS, tp=3, global_bsz=3, chunks=1).save(str(bad))
    root = converted["llama"]["root"]
    assert "does not divide --num-attention-heads" in _cli(
        ["reshard", "--load", root, "--galvatron-config", str(bad)], capsys)
    main(["reshard", "--load", root, "--galvatron-config", str(good), "--save", str(tmp_path / "copy")])
    assert "loads under this plan" in capsys.readouterr().out
    with open(tmp_path / "copy" / "iter_0000000" / "meta.json") as f:
        meta = json.load(f)
    assert meta["plan"]["pp_deg"] == 2 and meta["plan"]["layers"][0]["tp"] == 2
