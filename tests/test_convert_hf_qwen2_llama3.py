"""Qwen2 (q/k/v biases) and LLaMA-3.1 (llama3 RoPE scaling) against transformers itself: random
models built here from a config give the same logits after conversion, in one process and on 4
gloo ranks whose layers each take another TP layout (consecutive, strided, sequence-parallel,
none), where the gradients also equal transformers' own; exporting back gives the original
tensors and the same logits in transformers; other RoPE types are one-line errors."""
import importlib.util
import json
import os
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from megatron_galvatron.checkpoint.architecture import model_flags
from megatron_galvatron.convert import hf_llama
from megatron_galvatron.convert.hf import hf_to_ours, ours_to_hf
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.pipeline.schedules import Schedule
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import _forward_fn, _p2p, save_checkpoint, setup, train_step
from tests.dist_utils import run_distributed
from tests.test_convert_hf import _our_outputs, _randomize

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="needs Hugging Face transformers (pip install transformers)")

SEQ, BATCH, VOCAB, LAYERS = 8, 4, 61, 4
# Wavelengths of the 8 frequencies of a 16-wide head at theta 5e5: 6.3, 32, 165, ... tokens; an
# original context of 64 with factors 1 and 4 keeps the first, blends the second, scales the rest.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _qwen2():
    import transformers
    cfg = transformers.Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                   max_position_embeddings=16, rms_norm_eps=1e-6, rope_theta=5000.0,
                                   tie_word_embeddings=False, bos_token_id=3, eos_token_id=4)
    return _randomize(transformers.Qwen2ForCausalLM(cfg), 5)


def _llama3():
    import transformers
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                   max_position_embeddings=128, rms_norm_eps=1e-5,
                                   rope_parameters=dict(LLAMA3, rope_theta=500000.0), bos_token_id=3, eos_token_id=4)
    return _randomize(transformers.LlamaForCausalLM(cfg), 6)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf")
    gen = torch.Generator().manual_seed(8)
    seq = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    tokens, labels = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    out = {"tokens": tokens, "labels": labels}
    for name, model in (("qwen2", _qwen2()), ("llama3", _llama3())):
        hf_dir = str(base / f"{name}_hf")
        model.save_pretrained(hf_dir)
        root = str(base / f"{name}_ours")
        _, cfg = hf_to_ours(hf_dir, root)
        model.zero_grad()
        result = model(input_ids=tokens)
        loss = F.cross_entropy(result.logits.reshape(-1, VOCAB), labels.reshape(-1))
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        out[name] = {"model": model, "cfg": cfg, "root": root, "logits": result.logits.detach(), "loss": loss.item(),
                     # transformers' gradients under our names, through the converter's own mapping
                     "grads": dict(hf_llama.to_ours(cfg, grads.__getitem__, grads.__contains__)),
                     "argv": model_flags(cfg).split() + ["--seq-length", str(SEQ), "--load", root, "--mock-data",
                                                         "--train-iters", "1", "--make-vocab-size-divisible-by", "4"]}
    return out


def test_imported_configs(converted):
    q, l3 = converted["qwen2"]["cfg"], converted["llama3"]["cfg"]
    assert q.add_qkv_bias and not q.use_rope_scaling and q.rope_theta == 5000.0
    assert not l3.add_qkv_bias and l3.use_rope_scaling and l3.rope_theta == 500000.0
    assert (l3.rope_scaling_factor, l3.rope_scaling_low_freq_factor, l3.rope_scaling_high_freq_factor,
            l3.rope_scaling_original_max_position_embeddings) == (8.0, 1.0, 4.0, 64)
    assert "--add-qkv-bias" in model_flags(q) and "--use-rope-scaling" in model_flags(l3)


def test_transformers_4_rope_keys_read_the_same():
    """A Llama-3.1 config.json as transformers 4 wrote it: rope_theta and rope_scaling apart."""
    v5 = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 96,
          "vocab_size": VOCAB, "max_position_embeddings": 128, "rope_parameters": dict(LLAMA3, rope_theta=5e5)}
    v4 = dict(v5, rope_theta=5e5, rope_scaling=dict(LLAMA3))
    del v4["rope_parameters"]
    assert hf_llama.config_from_hf(v4) == hf_llama.config_from_hf(v5)
    back = hf_llama.hf_config(hf_llama.config_from_hf(v4), v4)
    assert back["rope_theta"] == 5e5 and back["rope_scaling"] == LLAMA3 and "rope_parameters" not in back


@pytest.mark.parametrize("kind", ["yarn", "linear", "dynamic"])
def test_other_rope_types_are_refused(kind):
    with pytest.raises(UserError, match=f"RoPE type '{kind}' is not implemented"):
        hf_llama.config_from_hf({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                                 "intermediate_size": 96, "vocab_size": 61,
                                 "rope_scaling": {"rope_type": kind, "factor": 2.0}})


def _check(name, got, ref, rows=slice(None), tol=1e-4):
    loss, logits = got
    assert (logits - ref["logits"][rows]).abs().max().item() <= tol, name
    assert abs(loss - ref["loss"]) <= tol, (name, loss, ref["loss"])


def test_logits_match_transformers_single_process(converted):
    for name in ("qwen2", "llama3"):
        tr = setup(build_parser().parse_args(converted[name]["argv"] + ["--global-batch-size", str(BATCH)]))
        _check(name, _our_outputs(tr, converted["tokens"], converted["labels"]), converted[name])


def _mixed_plan() -> dict:
    """4 ranks, one stage; each layer under another TP layout, the vocab under TP 2."""
    layers = [LayerStrategy(tp=2, tp_consec=True), LayerStrategy(tp=2, tp_consec=False, dp_type="zero3"),
              LayerStrategy(tp=2, sp=True, dp_type="zero2"), LayerStrategy(tp=1)]
    return Plan(world_size=4, pp_deg=1, pp_division=[LAYERS], global_bsz=BATCH, chunks=1, layers=layers,
                vocab=VocabStrategy(tp=2)).to_dict()


def _logits_and_grads(rank, world, argvs, plan_dict, tokens, labels):
    out = []
    for argv in argvs:
        tr = setup(build_parser().parse_args(argv), Plan.from_dict(plan_dict).validate(world_size=world))
        tr.stage.train()
        tr.model.zero_grad()
        schedule = Schedule(tr.plan.pipeline_type, 1, 0, 1, _p2p(tr, torch.float32),
                            partial(_forward_fn, tr, [(tokens, labels)]), tr.model.start_microbatch)
        with tr.model.compute():
            schedule.run(tr.device)
        tr.model.finish_grad_sync()
        grads = gather_model(tr.stage, grads=True)
        rows = tr.stage.batch_block(tr.stage.vocab_layout, tokens.shape[0])  # this rank's share of the logits
        out.append((_our_outputs(tr, tokens, labels), grads, rows))
    return out


def test_logits_and_grads_match_transformers_under_mixed_tp(converted):
    names = ("qwen2", "llama3")
    results = run_distributed(4, _logits_and_grads, [converted[n]["argv"] for n in names], _mixed_plan(),
                              converted["tokens"], converted["labels"], timeout=240)
    for j, name in enumerate(names):
        ref = converted[name]
        for rank in range(4):
            got, grads, rows = results[rank][j]
            _check(name, got, ref, rows)
            assert set(grads) == set(ref["grads"]), rank
            for k, g in ref["grads"].items():
                torch.testing.assert_close(grads[k], g, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name} {k}: {m}")
    # the biases did take part (q's gradient is not zero)
    assert converted["qwen2"]["grads"]["layers.1.attention.qkv.bias"][:32].abs().max() > 1e-3


@pytest.mark.parametrize("name", ["qwen2", "llama3"])
def test_export_reloads_in_transformers_with_the_same_logits(converted, tmp_path, name):
    model = converted[name]["model"]
    out = str(tmp_path / "back")
    ours_to_hf(converted[name]["root"], out)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == model.config.model_type
    back = type(model).from_pretrained(out).eval()
    a, b = model.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert back.config.rope_parameters == model.config.rope_parameters
    with torch.no_grad():
        assert torch.equal(back(input_ids=converted["tokens"]).logits, converted[name]["logits"])


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_a_model_trained_here_with_the_flags_exports(converted, tmp_path, qkv_bias):
    """No imported config to start from: the flags alone give transformers the same model."""
    import transformers
    root = str(tmp_path / "ck")
    argv = ["--model-family", "llama", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--num-query-groups", "2", "--ffn-hidden-size", "96", "--vocab-size", str(VOCAB), "--seq-length", str(SEQ),
            "--rotary-base", "500000", "--use-rope-scaling", "--rope-scaling-factor", "4",
            "--rope-scaling-original-max-position-embeddings", "64", "--mock-data", "--train-iters", "1",
            "--global-batch-size", str(BATCH), "--make-vocab-size-divisible-by", "4", "--save", root, "--lr", "1e-2"]
    tr = setup(build_parser().parse_args(argv + (["--add-qkv-bias"] if qkv_bias else [])))
    train_step(tr)  # biases and all move off their zero start
    save_checkpoint(tr)
    loss, logits = _our_outputs(tr, converted["tokens"], converted["labels"])
    out = str(tmp_path / "hf")
    ours_to_hf(root, out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == ("Qwen2ForCausalLM" if qkv_bias else "LlamaForCausalLM")
    assert model.config.rope_parameters["rope_type"] == "llama3" and model.config.rope_parameters["factor"] == 4.0
    with torch.no_grad():
        ref = model(input_ids=converted["tokens"]).logits
    assert (ref - logits).abs().max().item() <= 1e-4
