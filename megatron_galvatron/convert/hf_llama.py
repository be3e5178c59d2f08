"""Hugging Face LLaMA (LlamaForCausalLM) <-> our llama family; the decoder Qwen2 shares (hf_qwen2).

q_proj, k_proj and v_proj are stacked into our fused QKV as [Q heads; K groups; V groups]
(grouped-query attention keeps its num_key_value_heads), gate_proj and up_proj into our
gate_up as [gate; up]. Hugging Face LLaMA weights already use the rotate-half RoPE layout, as
ours do, so q and k are not permuted. A tied LM head (tie_word_embeddings) becomes a copy of
the embedding: the llama family trains an untied head. RoPE is plain or LLaMA-3.x scaled
("llama3"), read from transformers 4's rope_theta / rope_scaling or 5's rope_parameters and
written back in the form the folder came with.
"""
import re
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from megatron_galvatron.errors import UserError
from megatron_galvatron.convert.hf_config import config_error, positive_size, real
from megatron_galvatron.json_file import check, field
from megatron_galvatron.model.config import GPTConfig

ARCHITECTURE = "LlamaForCausalLM"
_BUFFERS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


_SCALING = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
_SCALING_FIELDS = ("rope_scaling_factor", "rope_scaling_low_freq_factor", "rope_scaling_high_freq_factor",
                   "rope_scaling_original_max_position_embeddings")


def _rope(c: dict) -> dict:
    """Our RoPE fields from either transformers 4's rope_theta / rope_scaling keys or 5's rope_parameters."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    for key, v in (("rope_parameters", params), ("rope_scaling", scaling)):
        check(v, dict, f"key {key!r}", error=config_error)
    merged = {**params, **scaling}
    kind = merged.get("rope_type", merged.get("type")) or "default"
    if kind not in ("default", "llama3"):
        raise UserError(f"RoPE type {kind!r} is not implemented: only plain RoPE (default) and LLaMA-3.x "
                        f"scaling (llama3) convert")
    if real(merged, "partial_rotary_factor", 1.0) != 1.0:
        raise UserError(f"partial_rotary_factor {merged['partial_rotary_factor']}: this runtime rotates whole heads")
    out = {"rope_theta": real(c, "rope_theta", real(params, "rope_theta", 10000.0))}
    if kind == "llama3":
        out.update(use_rope_scaling=True, rope_scaling_factor=real(merged, "factor", 8.0),
                   rope_scaling_low_freq_factor=real(merged, "low_freq_factor", 1.0),
                   rope_scaling_high_freq_factor=real(merged, "high_freq_factor", 4.0),
                   rope_scaling_original_max_position_embeddings=positive_size(
                       merged, "original_max_position_embeddings", positive_size(c, "max_position_embeddings", 2048)))
    return out


def decoder_config(c: dict, add_qkv_bias: bool) -> GPTConfig:
    """The fields LLaMA and Qwen2 share: SwiGLU, RMSNorm, RoPE, grouped-query attention."""
    act = field(c, "hidden_act", str, default="silu", error=config_error)
    if act != "silu":
        raise UserError(f"hidden_act {act!r} is not the SwiGLU (silu) this runtime implements")
    hidden, heads = positive_size(c, "hidden_size"), positive_size(c, "num_attention_heads")
    if positive_size(c, "head_dim", hidden // heads) != hidden // heads:
        raise UserError(f"head_dim {c['head_dim']} differs from hidden_size / num_attention_heads = "
                        f"{hidden // heads}, which this runtime assumes")
    positions = positive_size(c, "max_position_embeddings", 2048)
    return GPTConfig(family="llama", num_layers=positive_size(c, "num_hidden_layers"), hidden_size=hidden,
                     num_attention_heads=heads, num_query_groups=positive_size(c, "num_key_value_heads", heads),
                     ffn_hidden_size=positive_size(c, "intermediate_size"), vocab_size=positive_size(c, "vocab_size"),
                     seq_length=positions, max_position_embeddings=positions, norm_eps=real(c, "rms_norm_eps", 1e-6),
                     attention_dropout=real(c, "attention_dropout", 0.0), init_std=real(c, "initializer_range", 0.02),
                     tie_embeddings=False, add_qkv_bias=add_qkv_bias, **_rope(c))


def config_from_hf(c: dict) -> GPTConfig:
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            raise UserError(f"LLaMA config sets {key}=true: the llama family has no biases")
    return decoder_config(c, add_qkv_bias=False)


def decoder_hf_config(cfg: GPTConfig, base: Optional[dict], architecture: str, model_type: str) -> dict:
    c = dict(base or {})
    c.setdefault("attention_dropout", cfg.attention_dropout)  # how it was trained: the imported value stays
    c.setdefault("initializer_range", cfg.init_std)
    # Positions only size the RoPE table, which a run builds for its own sequence length: a
    # fine-tune at a shorter one keeps the context the model came with.
    positions = max(cfg.max_position_embeddings, positive_size(c, "max_position_embeddings", 1))
    c.update(architectures=[architecture], model_type=model_type, vocab_size=cfg.vocab_size,
             hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups,
             head_dim=cfg.head_dim, max_position_embeddings=positions, rms_norm_eps=cfg.norm_eps,
             hidden_act="silu", tie_word_embeddings=False)
    rope = {"rope_type": "default"}
    if cfg.use_rope_scaling:
        rope = dict(zip(_SCALING, (getattr(cfg, f) for f in _SCALING_FIELDS)), rope_type="llama3")
    owned = _SCALING + ("rope_type", "type", "rope_theta")  # the rest of the base's entries stays as it was
    if isinstance(c.get("rope_parameters"), dict):  # transformers 5 keeps theta and scaling together
        kept = {k: v for k, v in c["rope_parameters"].items() if k not in owned}
        c["rope_parameters"] = dict(kept, **rope, rope_theta=cfg.rope_theta)
    else:  # what transformers 4 reads, and 5 too
        kept = {k: v for k, v in (c.get("rope_scaling") or {}).items() if k not in owned}
        c.update(rope_theta=cfg.rope_theta, rope_scaling=dict(kept, **rope) if cfg.use_rope_scaling else None)
    return c


def hf_config(cfg: GPTConfig, base: Optional[dict]) -> dict:
    return dict(decoder_hf_config(cfg, base, ARCHITECTURE, "llama"), attention_bias=False, mlp_bias=False)


def normalize_key(key: str) -> Optional[str]:
    k = key if key.startswith("model.") or key == "lm_head.weight" else "model." + key
    return None if _BUFFERS.fullmatch(k) else k


def hf_shapes(cfg: GPTConfig, tied: bool = False) -> Tuple[Dict[str, tuple], Dict[str, tuple]]:
    h, f, hd = cfg.hidden_size, cfg.ffn_hidden_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_query_groups * hd
    req = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    head = {"lm_head.weight": (cfg.vocab_size, h)}
    if not tied:
        req.update(head)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        req.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                    p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                    p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                    p + "mlp.down_proj.weight": (h, f)})
        if cfg.add_qkv_bias:
            req.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)})
    return req, head if tied else {}


_LAYER = [("input_norm.weight", "input_layernorm.weight"), ("attention.dense.weight", "self_attn.o_proj.weight"),
          ("post_attention_norm.weight", "post_attention_layernorm.weight"), ("mlp.fc2.weight", "mlp.down_proj.weight")]


def to_ours(cfg: GPTConfig, get: Callable[[str], torch.Tensor], has: Callable[[str], bool]
            ) -> Iterator[Tuple[str, torch.Tensor]]:
    yield "vocab.word_embeddings.weight", get("model.embed_tokens.weight")
    yield "vocab.final_norm.weight", get("model.norm.weight")
    # A tied head is a copy of its own (safetensors refuses two keys on one storage).
    yield "vocab.lm_head.weight", get("lm_head.weight") if has("lm_head.weight") else \
        get("model.embed_tokens.weight").clone()
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for ours, theirs in _LAYER:
            yield f"layers.{i}.{ours}", get(p + theirs)
        for kind in ("weight", "bias") if cfg.add_qkv_bias else ("weight",):
            yield f"layers.{i}.attention.qkv.{kind}", torch.cat([get(p + f"self_attn.{x}_proj.{kind}") for x in "qkv"])
        yield f"layers.{i}.mlp.gate_up.weight", torch.cat([get(p + "mlp.gate_proj.weight"),
                                                            get(p + "mlp.up_proj.weight")])


def to_hf(cfg: GPTConfig, get: Callable[[str], torch.Tensor]) -> Iterator[Tuple[str, torch.Tensor]]:
    hd = cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_query_groups * hd
    yield "model.embed_tokens.weight", get("vocab.word_embeddings.weight")
    yield "model.norm.weight", get("vocab.final_norm.weight")
    yield "lm_head.weight", get("vocab.lm_head.weight")
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        for ours, theirs in _LAYER:
            yield p + theirs, get(f"layers.{i}.{ours}")
        for kind in ("weight", "bias") if cfg.add_qkv_bias else ("weight",):
            for x, t in zip("qkv", get(f"layers.{i}.attention.qkv.{kind}").split([q, kv, kv])):
                yield p + f"self_attn.{x}_proj.{kind}", t.contiguous()
        gate, up = get(f"layers.{i}.mlp.gate_up.weight").chunk(2)
        yield p + "mlp.gate_proj.weight", gate.contiguous()
        yield p + "mlp.up_proj.weight", up.contiguous()
