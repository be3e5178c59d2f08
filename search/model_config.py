"""The model being searched for: Megatron-spelled flags, the config they make, parameter counts."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict

from megatron_galvatron.errors import UserError
from megatron_galvatron.plan import ModelShape

FAMILIES = ("gpt2", "llama")


@dataclass(frozen=True)
class ModelConfig:
    family: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int
    seq_length: int

    @property
    def tied_embeddings(self) -> bool:
        """GPT-2 shares the word embedding with the LM head; LLaMA has two matrices."""
        return self.family == "gpt2"

    @property
    def kv_size(self) -> int:
        return self.hidden_size // self.num_attention_heads * self.num_query_groups

    def layer_param_count(self) -> int:
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.kv_size
        if self.family == "gpt2":  # biases and two LayerNorms (weight + bias)
            return (h * (h + 2 * kv) + (h + 2 * kv)) + (h * h + h) + (2 * h * f + f + h) + 4 * h
        return h * (h + 2 * kv) + h * h + 3 * h * f + 2 * h  # SwiGLU MLP, two RMSNorms

    def vocab_param_count(self) -> int:
        """Parameters of one vocab matrix (the embedding, or the untied LM head)."""
        return self.vocab_size * self.hidden_size

    def shape(self) -> ModelShape:
        return ModelShape(num_layers=self.num_layers, num_attention_heads=self.num_attention_heads,
                          num_query_groups=self.num_query_groups, ffn_hidden_size=self.ffn_hidden_size)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> "ModelConfig":
        for k in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                  "vocab_size", "seq_length"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"--{k.replace('_', '-')}={v!r} must be a positive integer")
        if self.family not in FAMILIES:
            raise UserError(f"--model-family={self.family!r}: use one of {', '.join(FAMILIES)}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"--hidden-size={self.hidden_size} is not divisible by "
                            f"--num-attention-heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            raise UserError(f"--num-query-groups={self.num_query_groups} does not divide "
                            f"--num-attention-heads={self.num_attention_heads}")
        return self


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model (same flags as pretrain_gpt.py)")
    g.add_argument("--model-family", choices=FAMILIES, default="gpt2")
    g.add_argument("--num-layers", type=int, required=True)
    g.add_argument("--hidden-size", type=int, required=True)
    g.add_argument("--num-attention-heads", type=int, required=True)
    g.add_argument("--num-query-groups", type=int, default=None, help="default: --num-attention-heads")
    g.add_argument("--ffn-hidden-size", type=int, default=None, help="default: 4 x --hidden-size")
    g.add_argument("--seq-length", type=int, required=True)
    g.add_argument("--vocab-size", type=int, required=True)


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        family=args.model_family, num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups or args.num_attention_heads,
        ffn_hidden_size=args.ffn_hidden_size or 4 * args.hidden_size,
        vocab_size=args.vocab_size, seq_length=args.seq_length,
    ).check()
