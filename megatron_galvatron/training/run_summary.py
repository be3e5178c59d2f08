"""What a run says about itself before its first step: the model's size, the data it reads,
and, when no model or data flag was given, that it trains a toy model on synthetic tokens."""
import argparse
from typing import Optional

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.training.config import DataConfig

# The flags that name a model; none of them given means the parser's toy defaults.
MODEL_SHAPE_FLAGS = ("model_family", "num_layers", "hidden_size", "num_attention_heads", "seq_length", "vocab_size",
                     "ffn_hidden_size", "num_query_groups")


def toy_note(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[str]:
    """One line when neither the model nor the data was named, else None."""
    defaults = all(getattr(args, k, None) == parser.get_default(k) for k in MODEL_SHAPE_FLAGS if hasattr(args, k))
    if not defaults or args.data_path or args.mock_data or args.load:
        return None
    return ("note: no model or data flags given: training a toy model (the flags' defaults, see --help) on mock "
            "data (synthetic tokens); name a model (--num-layers, --hidden-size, ...) and --data-path to train a "
            "real one")


def model_summary(cfg: GPTConfig) -> str:
    n = cfg.param_count()
    kind = cfg.family or f"{cfg.normalization}, {cfg.position_embedding_type} positions" + (", SwiGLU" if cfg.swiglu else "")
    return (f"model: {kind}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads "
            f"({cfg.num_query_groups} K/V groups), MLP {cfg.ffn_hidden_size}, vocabulary {cfg.vocab_size}, "
            f"sequence {cfg.seq_length}: {n:,} parameters ({n / 1e9:.3f} B)")


def data_summary(data: DataConfig, cfg: GPTConfig, train, valid) -> str:
    source = (f"{' '.join(data.path)} (split {data.split})" if data.path
              else f"mock data (synthetic tokens below {cfg.vocab_size})")
    n_valid = len(valid) if valid is not None else 0
    return (f"data: {source}: {len(train):,} training samples and {n_valid:,} validation samples of "
            f"{cfg.seq_length} tokens")
