"""Hugging Face LLaMA (LlamaForCausalLM) <-> our llama family.

q_proj, k_proj and v_proj are stacked into our fused QKV as [Q heads; K groups; V groups]
(grouped-query attention keeps its num_key_value_heads), gate_proj and up_proj into our
gate_up as [gate; up]. Hugging Face LLaMA weights already use the rotate-half RoPE layout, as
ours do, so q and k are not permuted. A tied LM head (tie_word_embeddings) becomes a copy of
the embedding: the llama family trains an untied head.
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


def _rope(c: dict) -> Tuple[float, str]:
    """(theta, type) from either the older rope_theta / rope_scaling keys or rope_parameters."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    for key, v in (("rope_parameters", params), ("rope_scaling", scaling)):
        check(v, dict, f"key {key!r}", error=config_error)
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type") or "default"
    return real(c, "rope_theta", real(params, "rope_theta", 10000.0)), kind


def config_from_hf(c: dict) -> GPTConfig:
    act = field(c, "hidden_act", str, default="silu", error=config_error)
    if act != "silu":
        raise UserError(f"LLaMA hidden_act {act!r} is not the SwiGLU (silu) this runtime implements")
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            raise UserError(f"LLaMA config sets {key}=true: the llama family has no biases")
    theta, kind = _rope(c)
    if kind != "default":
        raise UserError(f"LLaMA RoPE type {kind!r} (rope scaling) is not implemented: only plain RoPE converts")
    hidden, heads = positive_size(c, "hidden_size"), positive_size(c, "num_attention_heads")
    if positive_size(c, "head_dim", hidden // heads) != hidden // heads:
        raise UserError(f"LLaMA head_dim {c['head_dim']} differs from hidden_size / num_attention_heads = "
                        f"{hidden // heads}, which this runtime assumes")
    positions = positive_size(c, "max_position_embeddings", 2048)
    return GPTConfig(family="llama", num_layers=positive_size(c, "num_hidden_layers"), hidden_size=hidden,
                     num_attention_heads=heads, num_query_groups=positive_size(c, "num_key_value_heads", heads),
                     ffn_hidden_size=positive_size(c, "intermediate_size"), vocab_size=positive_size(c, "vocab_size"),
                     seq_length=positions, max_position_embeddings=positions, norm_eps=real(c, "rms_norm_eps", 1e-6),
                     rope_theta=theta, attention_dropout=real(c, "attention_dropout", 0.0),
                     init_std=real(c, "initializer_range", 0.02), tie_embeddings=False)


def hf_config(cfg: GPTConfig, base: Optional[dict]) -> dict:
    c = dict(base or {})
    c.update(architectures=[ARCHITECTURE], model_type="llama", vocab_size=cfg.vocab_size,
             hidden_size=cfg.hidden_size, intermediate_size=cfg.ffn_hidden_size, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_query_groups,
             head_dim=cfg.head_dim, max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
             hidden_act="silu", attention_bias=False, mlp_bias=False, attention_dropout=cfg.attention_dropout,
             initializer_range=cfg.init_std, tie_word_embeddings=False)
    if isinstance(c.get("rope_parameters"), dict):
        c["rope_parameters"] = dict(c["rope_parameters"], rope_theta=cfg.rope_theta, rope_type="default")
    else:
        c.update(rope_theta=cfg.rope_theta, rope_scaling=None)
    return c


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
        qkv = [get(p + f"self_attn.{x}_proj.weight") for x in "qkv"]
        yield f"layers.{i}.attention.qkv.weight", torch.cat(qkv)
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
        wq, wk, wv = get(f"layers.{i}.attention.qkv.weight").split([q, kv, kv])
        yield p + "self_attn.q_proj.weight", wq.contiguous()
        yield p + "self_attn.k_proj.weight", wk.contiguous()
        yield p + "self_attn.v_proj.weight", wv.contiguous()
        gate, up = get(f"layers.{i}.mlp.gate_up.weight").chunk(2)
        yield p + "mlp.gate_proj.weight", gate.contiguous()
        yield p + "mlp.up_proj.weight", up.contiguous()
