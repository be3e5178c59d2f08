"""The model architecture a checkpoint records, and whether it fits the model of this run."""
import dataclasses
from typing import List

from megatron_galvatron.checkpoint.format import CheckpointError
from megatron_galvatron.model.config import FAMILY_ARCHITECTURE, GPTConfig, flag

_ROPE_SCALING = ("rope_scaling_factor", "rope_scaling_low_freq_factor", "rope_scaling_high_freq_factor",
                 "rope_scaling_original_max_position_embeddings")

# Flags that fix tensor shapes: a mismatch cannot load.
_SHAPE_FLAGS = {"num_layers": "--num-layers", "hidden_size": "--hidden-size",
                "num_attention_heads": "--num-attention-heads", "num_query_groups": "--num-query-groups",
                "ffn_hidden_size": "--ffn-hidden-size", "vocab_size": "--vocab-size",
                "normalization": "--normalization", "position_embedding_type": "--position-embedding-type",
                "swiglu": "--swiglu", "add_bias_linear": "--add-bias-linear",
                "tie_embeddings": "--tie-embeddings-and-output-weights", "add_qkv_bias": "--add-qkv-bias"}
# Flags that change the function but not the shapes: a mismatch loads with a warning.
_FUNCTION_FLAGS = {"norm_eps": "--norm-epsilon", "rope_theta": "--rotary-base", "use_rope_scaling": "--use-rope-scaling",
                   **{k: flag(k) for k in _ROPE_SCALING}}
# Spelling of each architecture field's value on the command line.
_ARCH_FLAGS = {"normalization": lambda v: f"--normalization {v}",
               "position_embedding_type": lambda v: f"--position-embedding-type {v}",
               "swiglu": lambda v: "--swiglu" if v else "--no-swiglu",
               "add_bias_linear": lambda v: "--add-bias-linear" if v else "--disable-bias-linear",
               "tie_embeddings": lambda v: ("--tie-embeddings-and-output-weights" if v
                                            else "--untie-embeddings-and-output-weights")}


def config_record(cfg: GPTConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_record(record: dict) -> GPTConfig:
    """A record older than the architecture fields names only its family, which sets them."""
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in record.items() if k in known})


def model_flags(cfg: GPTConfig) -> str:
    """The pretrain_gpt.py flags that build this architecture: its family (the nearest preset)
    and every architecture field that differs from it."""
    family = cfg.family or "gpt2"
    flags = [f"--model-family {family}", f"--num-layers {cfg.num_layers}", f"--hidden-size {cfg.hidden_size}",
             f"--num-attention-heads {cfg.num_attention_heads}", f"--ffn-hidden-size {cfg.ffn_hidden_size}",
             f"--vocab-size {cfg.vocab_size}", f"--norm-epsilon {cfg.norm_eps}"]
    flags += [spell(getattr(cfg, k)) for k, spell in _ARCH_FLAGS.items()
              if getattr(cfg, k) != FAMILY_ARCHITECTURE[family][k]]
    if cfg.num_query_groups != cfg.num_attention_heads:
        flags.append(f"--num-query-groups {cfg.num_query_groups}")
    if cfg.learned_positions:
        flags.append(f"--max-position-embeddings {cfg.max_position_embeddings}")
    else:
        flags.append(f"--rotary-base {cfg.rope_theta}")
    if cfg.add_qkv_bias:
        flags.append("--add-qkv-bias")
    if cfg.use_rope_scaling:
        flags += ["--use-rope-scaling"] + [f"{flag(k)} {getattr(cfg, k)}" for k in _ROPE_SCALING]
    return " ".join(flags)


def check_config(record: dict, cfg: GPTConfig, where: str) -> List[str]:
    """Raise if the checkpoint's architecture differs from cfg; return warnings for softer differences."""
    saved = config_from_record(record)
    fields = dict(_SHAPE_FLAGS)
    if cfg.learned_positions:
        fields["max_position_embeddings"] = "--max-position-embeddings"  # shape of the position table
    diffs = [f"{flag} {getattr(saved, name)} (this run: {getattr(cfg, name)})"
             for name, flag in fields.items() if getattr(saved, name) != getattr(cfg, name)]
    if diffs:
        raise CheckpointError(f"checkpoint {where} was saved with {', '.join(diffs)}: run with the checkpoint's "
                              f"model flags: {model_flags(saved)}")
    return [f"checkpoint {where} has {flag} {getattr(saved, name)} but this run uses {getattr(cfg, name)}"
            for name, flag in _FUNCTION_FLAGS.items() if getattr(saved, name) != getattr(cfg, name)]
