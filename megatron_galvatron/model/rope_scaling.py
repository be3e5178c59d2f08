"""LLaMA-3.x RoPE frequency scaling (Hugging Face rope_type "llama3", Megatron --use-rope-scaling).

A rotary frequency whose wavelength is longer than the pretraining context / low_freq_factor is
divided by factor (long-range positions stretch to the new context), one shorter than the context
/ high_freq_factor is kept (local order stays as trained), and those between are interpolated
linearly in context / wavelength.
"""
import math

import torch

from megatron_galvatron.model.config import GPTConfig


def llama3_scaled(inv_freq: torch.Tensor, cfg: GPTConfig) -> torch.Tensor:
    factor, low, high = cfg.rope_scaling_factor, cfg.rope_scaling_low_freq_factor, cfg.rope_scaling_high_freq_factor
    context = cfg.rope_scaling_original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    smooth = ((context / wavelen - low) / (high - low)).clamp(0.0, 1.0)  # 0: long wavelength, 1: short
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq
