"""Named model sizes (`--model-size`): Hetu-Galvatron's names and the published configurations of
GPT-2, LLaMA, LLaMA-3 and Qwen2. Each preset gives the model flags' values (by their argparse
names); any flag given on the command line overrides its preset value.

A flag's default is marked (NotGiven) so that a preset can tell "not given" from "given the same
value as the default": `--model-size llama3-8b --rotary-base 10000` keeps 10000."""
import argparse
from typing import Any, Dict

from megatron_galvatron.errors import UserError


class NotGivenInt(int):
    pass


class NotGivenFloat(float):
    pass


class NotGivenStr(str):
    pass


def not_given(value: Any) -> Any:
    """`value` as a flag's default: equal to it, and marked as not given on the command line."""
    for kind, marked in ((bool, None), (int, NotGivenInt), (float, NotGivenFloat), (str, NotGivenStr)):
        if isinstance(value, kind):
            return value if marked is None else marked(value)
    return value


def plain(value: Any) -> Any:
    """A flag's value as the plain int, float or str it stands for."""
    for marked, kind in ((NotGivenInt, int), (NotGivenFloat, float), (NotGivenStr, str)):
        if isinstance(value, marked):
            return kind(value)
    return value


def given(value: Any) -> bool:
    return value is not None and not isinstance(value, (NotGivenInt, NotGivenFloat, NotGivenStr))


def _gpt(layers: int, hidden: int, heads: int, seq: int) -> Dict[str, Any]:
    return dict(model_family="gpt2", num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                ffn_hidden_size=4 * hidden, vocab_size=50257, seq_length=seq)


def _llama(layers: int, hidden: int, heads: int, ffn: int, seq: int, groups: int = None, vocab: int = 32000,
           theta: float = 10000.0, eps: float = 1e-6, **extra) -> Dict[str, Any]:
    out = dict(model_family="llama", num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
               num_query_groups=groups or heads, ffn_hidden_size=ffn, vocab_size=vocab, seq_length=seq,
               rotary_base=theta, norm_epsilon=eps)
    out.update(extra)
    return out


PRESETS: Dict[str, Dict[str, Any]] = {
    # GPT-2 (OpenAI's released sizes)
    "gpt2-small": _gpt(12, 768, 12, 1024),
    "gpt2-medium": _gpt(24, 1024, 16, 1024),
    "gpt2-large": _gpt(36, 1280, 20, 1024),
    "gpt2-xl": _gpt(48, 1600, 25, 1024),
    # Hetu-Galvatron's GPT sizes (head size 64-104)
    "gpt-0.3b": _gpt(8, 1024, 16, 1024),
    "gpt-7b": _gpt(32, 4096, 64, 2048),
    "gpt-13b": _gpt(40, 5120, 64, 2048),
    "gpt-30b": _gpt(60, 6656, 64, 2048),
    # LLaMA (Galvatron's llama-* are these; FFN = 8/3 hidden rounded up to 256)
    "llama-0.3b": _llama(24, 1024, 16, 2816, 2048),
    "llama-7b": _llama(32, 4096, 32, 11008, 2048),
    "llama-13b": _llama(40, 5120, 40, 13824, 2048),
    "llama-30b": _llama(60, 6656, 52, 17920, 2048),
    "llama-65b": _llama(80, 8192, 64, 22016, 2048),
    "llama2-7b": _llama(32, 4096, 32, 11008, 4096, eps=1e-5),
    "llama2-13b": _llama(40, 5120, 40, 13824, 4096, eps=1e-5),
    "llama2-70b": _llama(80, 8192, 64, 28672, 4096, groups=8, eps=1e-5),
    "llama3-8b": _llama(32, 4096, 32, 14336, 8192, groups=8, vocab=128256, theta=500000.0, eps=1e-5),
    "llama3-70b": _llama(80, 8192, 64, 28672, 8192, groups=8, vocab=128256, theta=500000.0, eps=1e-5),
    "llama3.1-8b": _llama(32, 4096, 32, 14336, 8192, groups=8, vocab=128256, theta=500000.0, eps=1e-5,
                          max_position_embeddings=131072, use_rope_scaling=True),
    # Qwen2 / Qwen2.5: q/k/v biases
    "qwen2-7b": _llama(28, 3584, 28, 18944, 4096, groups=4, vocab=152064, theta=1e6, add_qkv_bias=True,
                       max_position_embeddings=32768),
    "qwen2.5-1.5b": _llama(28, 1536, 12, 8960, 4096, groups=2, vocab=151936, theta=1e6, add_qkv_bias=True,
                           max_position_embeddings=32768, tie_embeddings=True),
    "qwen2.5-7b": _llama(28, 3584, 28, 18944, 4096, groups=4, vocab=152064, theta=1e6, add_qkv_bias=True,
                         max_position_embeddings=32768),
    "qwen2.5-72b": _llama(80, 8192, 64, 29568, 4096, groups=8, vocab=152064, theta=1e6, add_qkv_bias=True,
                          max_position_embeddings=32768),
}
# llama2-70b is Galvatron's spelling; llama-70b the common one
PRESETS["llama-70b"] = PRESETS["llama2-70b"]


def add_preset_arg(group) -> None:
    group.add_argument("--model-size", "--model_size", choices=sorted(PRESETS), default=None,
                       help="a named model (Galvatron's names and the common ones); every model flag given "
                            "overrides its value (docs/flags.md lists them)")


def apply_preset(args: argparse.Namespace, required=()) -> None:
    """Fill the model flags not given from --model-size; then refuse a missing `required` flag."""
    preset = PRESETS.get(getattr(args, "model_size", None) or "", {})
    for dest, value in preset.items():
        current = getattr(args, dest, None)
        if (not current) if isinstance(current, bool) else not given(current):  # a switch: only when off
            setattr(args, dest, value)
    for dest in required:
        if getattr(args, dest, None) is None:
            raise UserError(f"--{dest.replace('_', '-')} is required: give it, or --model-size NAME for a "
                            f"named model")
