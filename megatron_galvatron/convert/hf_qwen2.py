"""Hugging Face Qwen2 (Qwen2ForCausalLM) <-> our llama family with --add-qkv-bias.

Qwen2 is the LLaMA decoder with biases on the q, k and v projections (not on o_proj or the
MLP); the tensors are named as LLaMA's, so hf_llama's mapping serves both. Sliding-window
attention layers are refused: this runtime attends causally over the whole sequence.
"""
from typing import Optional

from megatron_galvatron.convert import hf_llama
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig

ARCHITECTURE = "Qwen2ForCausalLM"
normalize_key, hf_shapes, to_ours, to_hf = hf_llama.normalize_key, hf_llama.hf_shapes, hf_llama.to_ours, hf_llama.to_hf


def config_from_hf(c: dict) -> GPTConfig:
    layer_types = c.get("layer_types")
    sliding = ("sliding_attention" in layer_types if isinstance(layer_types, list)
               else bool(c.get("use_sliding_window")))
    if sliding:
        raise UserError("Qwen2 config uses sliding-window attention (use_sliding_window / layer_types), which this "
                        "runtime does not implement")
    return hf_llama.decoder_config(c, add_qkv_bias=True)


def hf_config(cfg: GPTConfig, base: Optional[dict]) -> dict:
    c = hf_llama.decoder_hf_config(cfg, base, ARCHITECTURE, "qwen2")
    c.update(use_sliding_window=False, layer_types=["full_attention"] * cfg.num_layers)
    c.setdefault("max_window_layers", cfg.num_layers)
    return c
