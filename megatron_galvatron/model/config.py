"""The one description of the model: its shape, architecture and vocabulary, and the flags that set it.

Torch-free, so the runtime, the profilers, the cost model, the search and the converters all
read the same object (a profile records it as ``to_dict()``; a checkpoint records it too).
"""
import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

from megatron_galvatron.errors import UserError
from megatron_galvatron.model.presets import add_preset_arg, apply_preset, not_given, plain
from megatron_galvatron.flag_types import float_in, int_in, interval, within

# The architecture fields (Megatron-LM's names and values); a family is a preset of all of them.
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
POSITION_EMBEDDINGS = ("learned_absolute", "rope")
ARCHITECTURE_FIELDS = ("normalization", "position_embedding_type", "swiglu", "add_bias_linear", "tie_embeddings")
FAMILY_ARCHITECTURE = {
    "gpt2": {"normalization": "LayerNorm", "position_embedding_type": "learned_absolute", "swiglu": False,
             "add_bias_linear": True, "tie_embeddings": True},
    "llama": {"normalization": "RMSNorm", "position_embedding_type": "rope", "swiglu": True,
              "add_bias_linear": False, "tie_embeddings": False},
}
FAMILIES = tuple(FAMILY_ARCHITECTURE)
ARCHITECTURE_VALUES = {"normalization": NORMALIZATIONS, "position_embedding_type": POSITION_EMBEDDINGS,
                       "swiglu": (False, True), "add_bias_linear": (False, True), "tie_embeddings": (False, True)}
ATTENTION_BACKENDS = ("default", "cudnn", "flash", "efficient", "math")
# Megatron-LM's --attention-backend values and the PyTorch SDPA kernel each means here
MEGATRON_ATTENTION_BACKENDS = {"auto": "default", "fused": "cudnn", "unfused": "math", "local": "math"}
# What sets the model's shape: a profile measured for other values does not describe this model.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                "ffn_hidden_size", "vocab_size", "seq_length") + ARCHITECTURE_FIELDS
# Largest sizes taken: beyond them a model cannot be built on any machine (and products of them overflow int32).
MAX_SIZE = {"num_layers": 2 ** 14, "hidden_size": 2 ** 18, "num_attention_heads": 2 ** 12,
            "num_query_groups": 2 ** 12, "ffn_hidden_size": 2 ** 20, "vocab_size": 2 ** 24, "seq_length": 2 ** 22,
            "max_position_embeddings": 2 ** 22, "make_vocab_size_divisible_by": 2 ** 16,
            "rope_scaling_original_max_position_embeddings": 2 ** 22}
# (low, high, low excluded, high excluded) of the float fields; dropout 1 would drop everything
FLOAT_RANGE = {"hidden_dropout": (0.0, 1.0, False, True), "attention_dropout": (0.0, 1.0, False, True),
               "norm_eps": (0.0, 1.0, True, True), "init_std": (0.0, 10.0, True, False),
               "rope_theta": (0.0, 1e12, True, False), "rope_scaling_factor": (0.0, 1e6, True, False),
               "rope_scaling_low_freq_factor": (0.0, 1e6, True, False),
               "rope_scaling_high_freq_factor": (0.0, 1e6, True, False)}


def flag(field_name: str) -> str:
    """The command-line flag that sets a field."""
    return {"family": "--model-family", "norm_eps": "--norm-epsilon", "init_std": "--init-method-std",
            "rope_theta": "--rotary-base", "tie_embeddings": "--untie-embeddings-and-output-weights",
            "add_bias_linear": "--disable-bias-linear"}.get(field_name, "--" + field_name.replace("_", "-"))


def architecture(record: Dict[str, Any]) -> Dict[str, Any]:
    """The architecture fields of a recorded config; a record older than the fields names only its
    family, which sets them all."""
    preset = FAMILY_ARCHITECTURE.get(record.get("family") or "gpt2", {})
    return {k: record[k] if record.get(k) is not None else preset.get(k) for k in ARCHITECTURE_FIELDS}


def family_of(fields: Dict[str, Any]) -> Optional[str]:
    """The family whose preset these architecture fields are, or None for a mixture."""
    return next((name for name, preset in FAMILY_ARCHITECTURE.items()
                 if all(fields[k] == v for k, v in preset.items())), None)


@dataclass(frozen=True)
class GPTConfig:
    # Given: the preset the architecture fields left None start from (default gpt2). Afterwards:
    # the family these fields are, None when they mix families (it is a label, never read to build).
    family: Optional[str] = None
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    vocab_size: int = 128
    seq_length: int = 16
    max_position_embeddings: Optional[int] = None
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    rope_theta: float = 10000.0
    add_qkv_bias: bool = False  # biases on the q/k/v projections only (Qwen2); gpt2 has every bias anyway
    # LLaMA-3.x ("llama3") RoPE frequency scaling: wavelengths longer than original/low_freq_factor
    # are divided by factor, shorter than original/high_freq_factor kept, those between blended.
    use_rope_scaling: bool = False
    rope_scaling_factor: float = 8.0
    rope_scaling_low_freq_factor: float = 1.0
    rope_scaling_high_freq_factor: float = 4.0
    rope_scaling_original_max_position_embeddings: int = 8192
    make_vocab_size_divisible_by: int = 128
    normalization: Optional[str] = None            # LayerNorm (with bias) or RMSNorm
    position_embedding_type: Optional[str] = None  # learned_absolute or rope
    swiglu: Optional[bool] = None                  # gated SiLU MLP; otherwise GELU (tanh)
    add_bias_linear: Optional[bool] = None         # biases in the four linears of a layer
    tie_embeddings: Optional[bool] = None          # the LM head is the word embedding
    use_flash_attn: bool = False
    attention_backend: str = "default"  # PyTorch SDPA kernel tried first: default / cudnn / flash / efficient / math

    def __post_init__(self):
        if self.family is not None and self.family not in FAMILIES:
            raise UserError(f"--model-family {self.family!r}: use one of {', '.join(FAMILIES)}")
        defaults = {"num_query_groups": self.num_attention_heads, "ffn_hidden_size": 4 * self.hidden_size,
                    "max_position_embeddings": self.seq_length, **architecture(dataclasses.asdict(self))}
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)  # frozen: the defaults are filled once, here
        for k, top in MAX_SIZE.items():
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
                raise UserError(f"{flag(k)} {v!r} must be an integer in [1, {top}]")
        for k, bounds in FLOAT_RANGE.items():
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not within(v, *bounds):
                raise UserError(f"{flag(k)} {v!r} must be a number in {interval(*bounds)}")
        for k in ("swiglu", "add_bias_linear", "tie_embeddings", "add_qkv_bias", "use_rope_scaling"):
            if not isinstance(getattr(self, k), bool):
                raise UserError(f"{k} {getattr(self, k)!r} must be true or false")
        if self.normalization not in NORMALIZATIONS:
            raise UserError(f"--normalization {self.normalization!r}: use one of {', '.join(NORMALIZATIONS)}")
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            raise UserError(f"--position-embedding-type {self.position_embedding_type!r}: use one of "
                            f"{', '.join(POSITION_EMBEDDINGS)}")
        if self.use_rope_scaling and self.position_embedding_type != "rope":
            raise UserError("--use-rope-scaling scales rotary positions: use it with --position-embedding-type rope "
                            "(--model-family llama)")
        if self.use_rope_scaling and self.rope_scaling_high_freq_factor <= self.rope_scaling_low_freq_factor:
            raise UserError(f"--rope-scaling-high-freq-factor {self.rope_scaling_high_freq_factor} must exceed "
                            f"--rope-scaling-low-freq-factor {self.rope_scaling_low_freq_factor}")
        object.__setattr__(self, "family", family_of(architecture(dataclasses.asdict(self))))
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"{flag('hidden_size')} {self.hidden_size} is not divisible by "
                            f"{flag('num_attention_heads')} {self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            raise UserError(f"{flag('num_attention_heads')} {self.num_attention_heads} is not divisible by "
                            f"{flag('num_query_groups')} {self.num_query_groups}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise UserError(f"--attention-backend {self.attention_backend!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
        if self.seq_length > self.max_position_embeddings:
            raise UserError(f"--seq-length {self.seq_length} exceeds --max-position-embeddings "
                            f"{self.max_position_embeddings}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_size(self) -> int:
        """Width of the K (and of the V) projection: query groups x head size."""
        return self.head_dim * self.num_query_groups

    @property
    def learned_positions(self) -> bool:
        return self.position_embedding_type == "learned_absolute"

    def norm_param_count(self) -> int:
        return self.hidden_size * (2 if self.normalization == "LayerNorm" else 1)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def linear_weight_count(self) -> int:
        """Elements of one layer's four linear weights (qkv, dense, the MLP's two; SwiGLU's gate in the first)."""
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.kv_size
        return h * (h + 2 * kv) + h * h + (3 if self.swiglu else 2) * h * f

    def layer_param_count(self) -> int:
        h, f, kv = self.hidden_size, self.ffn_hidden_size, self.kv_size
        n = self.linear_weight_count() + 2 * self.norm_param_count()
        if self.add_bias_linear:  # qkv, dense, the MLP's first (gate and up under SwiGLU) and second
            n += (h + 2 * kv) + h + (2 if self.swiglu else 1) * f + h
        elif self.add_qkv_bias:  # the q/k/v projections' only
            n += h + 2 * kv
        return n

    def vocab_param_count(self) -> int:
        """Parameters of one vocab matrix (the embedding, or the untied LM head)."""
        return self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        emb = self.vocab_param_count()
        n = self.num_layers * self.layer_param_count() + emb + self.norm_param_count()
        if self.learned_positions:
            n += self.max_position_embeddings * self.hidden_size
        if not self.tie_embeddings:
            n += emb
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the dense matmuls plus attention scores and values."""
        return 6 * self.param_count() + 12 * self.num_layers * self.hidden_size * self.seq_length


# Toy defaults let a bare `pretrain_gpt.py` run; CLIs that describe a real model pass required=True.
_SHAPE_DEFAULTS = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "seq_length": 32, "vocab_size": 256}


def default_vocab_size() -> int:
    """--vocab-size when not given (a tokenizer's vocabulary replaces it)."""
    return _SHAPE_DEFAULTS["vocab_size"]


def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The model flags (Megatron-LM spelling) every CLI shares; ``required``: the shape has no default."""
    g = p.add_argument_group("model")

    def size(name: str):
        return int_in(1, MAX_SIZE[name[2:].replace("-", "_")])

    def real(name: str):
        return float_in(*FLOAT_RANGE[name])

    def shape(name: str, help_: str) -> None:
        if required:  # required unless --model-size names it (checked in config_from_args)
            g.add_argument(name, type=size(name), default=None, help=help_ + " (required without --model-size)")
        else:
            g.add_argument(name, type=size(name), default=not_given(_SHAPE_DEFAULTS[name[2:].replace("-", "_")]),
                           help=help_ + " (default: %(default)s)")

    p.set_defaults(required_model_flags=[k for k in _SHAPE_DEFAULTS] if required else [])
    add_preset_arg(g)

    g.add_argument("--model-family", choices=FAMILIES, default=not_given("gpt2"),
                   help="preset of the architecture flags below, each overridable: gpt2: learned positions, "
                        "LayerNorm, GELU, biases, tied embeddings; llama: RoPE, RMSNorm, SwiGLU, no biases, "
                        "untied head (default: %(default)s)")
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=None, help="default: the family's")
    g.add_argument("--position-embedding-type", choices=POSITION_EMBEDDINGS, default=None,
                   help="default: the family's")
    g.add_argument("--swiglu", action=argparse.BooleanOptionalAction, default=None,
                   help="gated SiLU MLP (--no-swiglu: GELU); default: the family's")
    g.add_argument("--disable-bias-linear", dest="add_bias_linear", action="store_const", const=False,
                   default=None, help="no biases in the linear layers (default: the family's)")
    g.add_argument("--add-bias-linear", dest="add_bias_linear", action="store_const", const=True,
                   help="biases in the linear layers")
    g.add_argument("--untie-embeddings-and-output-weights", dest="tie_embeddings", action="store_const",
                   const=False, default=None, help="an LM head of its own (default: the family's)")
    g.add_argument("--tie-embeddings-and-output-weights", dest="tie_embeddings", action="store_const",
                   const=True, help="the LM head is the word embedding")
    g.add_argument("--group-query-attention", action="store_true",
                   help="grouped-query attention with --num-query-groups K/V heads (1 when not given)")
    shape("--num-layers", "transformer layers")
    shape("--hidden-size", "hidden size")
    shape("--num-attention-heads", "attention heads")
    g.add_argument("--num-query-groups", type=size("--num-query-groups"), default=None,
                   help="K/V heads; given alone it also turns on grouped-query attention "
                        "(default: 1 under --group-query-attention, else --num-attention-heads)")
    g.add_argument("--ffn-hidden-size", type=size("--ffn-hidden-size"), default=None,
                   help="MLP width (default: 4 x --hidden-size)")
    shape("--seq-length", "tokens per sample")
    g.add_argument("--max-position-embeddings", type=size("--max-position-embeddings"), default=None,
                   help="default: --seq-length")
    shape("--vocab-size", "vocabulary size before padding")
    g.add_argument("--make-vocab-size-divisible-by", type=size("--make-vocab-size-divisible-by"), default=128,
                   help="pad the vocabulary to a multiple of this x the vocab TP degree (default: %(default)s)")
    g.add_argument("--hidden-dropout", type=real("hidden_dropout"), default=0.0,
                   help="dropout after attention and MLP")
    g.add_argument("--attention-dropout", type=real("attention_dropout"), default=0.0,
                   help="dropout of the attention probabilities")
    g.add_argument("--norm-epsilon", type=real("norm_eps"), default=not_given(1e-5), help="epsilon of LayerNorm / RMSNorm")
    g.add_argument("--init-method-std", type=real("init_std"), default=0.02,
                   help="standard deviation of the normal weight initialisation")
    g.add_argument("--rotary-base", type=real("rope_theta"), default=not_given(10000.0), help="RoPE base (theta), llama")
    g.add_argument("--add-qkv-bias", action="store_true", help="biases on the q/k/v projections only (Qwen2)")
    g.add_argument("--use-rope-scaling", action="store_true",
                   help="LLaMA-3.x RoPE frequency scaling (Hugging Face rope_type llama3)")
    g.add_argument("--rope-scaling-factor", type=real("rope_scaling_factor"), default=8.0,
                   help="divides the frequencies of long wavelengths (default: %(default)s)")
    g.add_argument("--rope-scaling-low-freq-factor", type=real("rope_scaling_low_freq_factor"), default=1.0,
                   help="wavelengths above original / this are scaled (default: %(default)s)")
    g.add_argument("--rope-scaling-high-freq-factor", type=real("rope_scaling_high_freq_factor"), default=4.0,
                   help="wavelengths below original / this are kept (default: %(default)s)")
    g.add_argument("--rope-scaling-original-max-position-embeddings",
                   type=size("--rope-scaling-original-max-position-embeddings"), default=8192,
                   help="context length the model was pretrained with before scaling (default: %(default)s)")
    g.add_argument("--use-flash-attn", action="store_true", help="use the flash-attn package if installed")
    g.add_argument("--attention-backend", default="default",
                   choices=ATTENTION_BACKENDS + tuple(MEGATRON_ATTENTION_BACKENDS),
                   help="PyTorch SDPA kernel to try first (others stay as fallbacks); default: PyTorch's own "
                        "order; Megatron-LM's auto = default, fused = cudnn, unfused and local = math")


def config_from_args(args: argparse.Namespace) -> GPTConfig:
    apply_preset(args, getattr(args, "required_model_flags", ()))
    groups = args.num_query_groups
    if groups is None and args.group_query_attention:
        groups = 1  # Megatron-LM's default under --group-query-attention
    values = dict(
        family=args.model_family, normalization=args.normalization,
        position_embedding_type=args.position_embedding_type, swiglu=args.swiglu,
        add_bias_linear=args.add_bias_linear, tie_embeddings=args.tie_embeddings,
        num_layers=args.num_layers, hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads, num_query_groups=groups,
        ffn_hidden_size=args.ffn_hidden_size, vocab_size=args.vocab_size, seq_length=args.seq_length,
        max_position_embeddings=args.max_position_embeddings, hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout, norm_eps=args.norm_epsilon, init_std=args.init_method_std,
        rope_theta=args.rotary_base, make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        add_qkv_bias=args.add_qkv_bias, use_rope_scaling=args.use_rope_scaling,
        rope_scaling_factor=args.rope_scaling_factor, rope_scaling_low_freq_factor=args.rope_scaling_low_freq_factor,
        rope_scaling_high_freq_factor=args.rope_scaling_high_freq_factor,
        rope_scaling_original_max_position_embeddings=args.rope_scaling_original_max_position_embeddings,
        use_flash_attn=args.use_flash_attn,
        attention_backend=MEGATRON_ATTENTION_BACKENDS.get(args.attention_backend, args.attention_backend))
    return GPTConfig(**{k: plain(v) for k, v in values.items()})
