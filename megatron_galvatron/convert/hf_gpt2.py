"""Hugging Face GPT-2 (GPT2LMHeadModel) <-> our gpt2 family.

GPT-2 stores its projections as Conv1D weights [in, out] (y = x W + b), ours are Linear
[out, in], so every matrix is transposed. c_attn's output is already [Q heads; K heads; V heads]
with head-major columns, our QKV row order, and gelu_new is our tanh GELU. The LM head is tied
to wte; a converted model stays tied.
"""
import re
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from megatron_galvatron.errors import UserError
from megatron_galvatron.convert.hf_config import config_error, positive_size, real
from megatron_galvatron.json_file import field
from megatron_galvatron.model.config import GPTConfig

ARCHITECTURE = "GPT2LMHeadModel"
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # one formula, three names
_BUFFERS = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")


def config_from_hf(c: dict) -> GPTConfig:
    act = field(c, "activation_function", str, default="gelu_new", error=config_error)
    if act not in _TANH_GELUS:
        raise UserError(f"GPT-2 activation_function {act!r} is not the tanh GELU (gelu_new) this runtime "
                        f"implements: converting it would change the model")
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if bool(c.get(key, want)) != want:
            raise UserError(f"GPT-2 config sets {key}={c[key]}, which this runtime does not implement")
    if not c.get("tie_word_embeddings", True):
        raise UserError("GPT-2 config has tie_word_embeddings=false: the gpt2 family ties its LM head "
                        "to the embedding, so an untied head cannot be converted")
    h, positions = positive_size(c, "n_embd"), positive_size(c, "n_positions")
    return GPTConfig(family="gpt2", num_layers=positive_size(c, "n_layer"), hidden_size=h,
                     num_attention_heads=positive_size(c, "n_head"), ffn_hidden_size=positive_size(c, "n_inner", 4 * h),
                     vocab_size=positive_size(c, "vocab_size"), seq_length=positions, max_position_embeddings=positions,
                     norm_eps=real(c, "layer_norm_epsilon", 1e-5), hidden_dropout=real(c, "resid_pdrop", 0.0),
                     attention_dropout=real(c, "attn_pdrop", 0.0), init_std=real(c, "initializer_range", 0.02))


def hf_config(cfg: GPTConfig, base: Optional[dict]) -> dict:
    c = dict(base or {})
    # How the model was trained, not what it is: the imported config's values stay.
    for k, v in (("resid_pdrop", cfg.hidden_dropout), ("embd_pdrop", cfg.hidden_dropout),
                 ("attn_pdrop", cfg.attention_dropout), ("initializer_range", cfg.init_std)):
        c.setdefault(k, v)
    # Spellings that read back as the same model stay as the base wrote them.
    n_inner = None if "n_inner" in c and c["n_inner"] is None and cfg.ffn_hidden_size == 4 * cfg.hidden_size \
        else cfg.ffn_hidden_size
    act = c["activation_function"] if c.get("activation_function") in _TANH_GELUS else "gelu_new"
    c.update(architectures=[ARCHITECTURE], model_type="gpt2", vocab_size=cfg.vocab_size,
             n_positions=cfg.max_position_embeddings, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
             n_head=cfg.num_attention_heads, n_inner=n_inner, activation_function=act,
             layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
             tie_word_embeddings=True)
    c.setdefault("n_ctx", cfg.max_position_embeddings)
    return c


def normalize_key(key: str) -> Optional[str]:
    """The GPT2LMHeadModel name of a stored tensor (GPT2Model files lack the prefix); None for
    the causal-mask buffers older files carry."""
    k = key if key.startswith("transformer.") or key == "lm_head.weight" else "transformer." + key
    return None if _BUFFERS.fullmatch(k) else k


def hf_shapes(cfg: GPTConfig, tied: bool = True) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    """(required, optional) tensors by name with their shapes (GPT-2 is always tied)."""
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    req = {"transformer.wte.weight": (cfg.vocab_size, h), "transformer.wpe.weight": (cfg.max_position_embeddings, h),
           "transformer.ln_f.weight": (h,), "transformer.ln_f.bias": (h,)}
    for i in range(cfg.num_layers):
        p = f"transformer.h.{i}."
        req.update({p + "ln_1.weight": (h,), p + "ln_1.bias": (h,), p + "ln_2.weight": (h,), p + "ln_2.bias": (h,),
                    p + "attn.c_attn.weight": (h, 3 * h), p + "attn.c_attn.bias": (3 * h,),
                    p + "attn.c_proj.weight": (h, h), p + "attn.c_proj.bias": (h,),
                    p + "mlp.c_fc.weight": (h, f), p + "mlp.c_fc.bias": (f,),
                    p + "mlp.c_proj.weight": (f, h), p + "mlp.c_proj.bias": (h,)})
    return req, {"lm_head.weight": (cfg.vocab_size, h)}


# (ours, theirs, transposed) per layer
_LAYER = [("input_norm.weight", "ln_1.weight", False), ("input_norm.bias", "ln_1.bias", False),
          ("attention.qkv.weight", "attn.c_attn.weight", True), ("attention.qkv.bias", "attn.c_attn.bias", False),
          ("attention.dense.weight", "attn.c_proj.weight", True), ("attention.dense.bias", "attn.c_proj.bias", False),
          ("post_attention_norm.weight", "ln_2.weight", False), ("post_attention_norm.bias", "ln_2.bias", False),
          ("mlp.fc1.weight", "mlp.c_fc.weight", True), ("mlp.fc1.bias", "mlp.c_fc.bias", False),
          ("mlp.fc2.weight", "mlp.c_proj.weight", True), ("mlp.fc2.bias", "mlp.c_proj.bias", False)]
_VOCAB = [("vocab.word_embeddings.weight", "transformer.wte.weight"),
          ("vocab.position_embeddings", "transformer.wpe.weight"),
          ("vocab.final_norm.weight", "transformer.ln_f.weight"), ("vocab.final_norm.bias", "transformer.ln_f.bias")]


def to_ours(cfg: GPTConfig, get: Callable[[str], torch.Tensor], has: Callable[[str], bool]
            ) -> Iterator[Tuple[str, torch.Tensor]]:
    if has("lm_head.weight") and not torch.equal(get("lm_head.weight"), get("transformer.wte.weight")):
        raise UserError("this GPT-2 checkpoint's lm_head.weight differs from transformer.wte.weight (an untied "
                        "head): the gpt2 family ties them, so it cannot be converted")
    for ours, theirs in _VOCAB:
        yield ours, get(theirs)
    for i in range(cfg.num_layers):
        for ours, theirs, transposed in _LAYER:
            t = get(f"transformer.h.{i}.{theirs}")
            yield f"layers.{i}.{ours}", t.t().contiguous() if transposed else t


def to_hf(cfg: GPTConfig, get: Callable[[str], torch.Tensor]) -> Iterator[Tuple[str, torch.Tensor]]:
    for ours, theirs in _VOCAB:
        yield theirs, get(ours)
    for i in range(cfg.num_layers):
        for ours, theirs, transposed in _LAYER:
            t = get(f"layers.{i}.{ours}")
            yield f"transformer.h.{i}.{theirs}", t.t().contiguous() if transposed else t
