"""Model hyper-parameters for the two decoder-only families."""
from dataclasses import dataclass
from typing import Optional

from megatron_galvatron.errors import UserError

FAMILIES = ("gpt2", "llama")
ATTENTION_BACKENDS = ("default", "cudnn", "flash", "efficient", "math")


@dataclass
class GPTConfig:
    family: str = "gpt2"  # gpt2: learned positions, LayerNorm, GELU, biases, tied embeddings
    num_layers: int = 2   # llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied head
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
    make_vocab_size_divisible_by: int = 128
    tie_embeddings: Optional[bool] = None
    use_flash_attn: bool = False
    attention_backend: str = "default"  # PyTorch SDPA kernel tried first: default / cudnn / flash / efficient / math

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise UserError(f"--model-family {self.family!r}: use one of {', '.join(FAMILIES)}")
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.max_position_embeddings is None:
            self.max_position_embeddings = self.seq_length
        if self.tie_embeddings is None:
            self.tie_embeddings = self.family == "gpt2"
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"--hidden-size {self.hidden_size} is not divisible by --num-attention-heads "
                            f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            raise UserError(f"--num-attention-heads {self.num_attention_heads} is not divisible by "
                            f"--num-query-groups {self.num_query_groups}")
        if self.family == "gpt2" and self.num_query_groups != self.num_attention_heads:
            raise UserError("grouped-query attention (--num-query-groups) is only for --model-family llama")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise UserError(f"--attention-backend {self.attention_backend!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
        if self.seq_length > self.max_position_embeddings:
            raise UserError(f"--seq-length {self.seq_length} exceeds --max-position-embeddings "
                            f"{self.max_position_embeddings}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def gated_mlp(self) -> bool:
        return self.family == "llama"

    @property
    def has_bias(self) -> bool:
        return self.family == "gpt2"

    def layer_param_count(self) -> int:
        h, f, hd = self.hidden_size, self.ffn_hidden_size, self.head_dim
        qkv = h * (self.num_attention_heads + 2 * self.num_query_groups) * hd
        dense = self.num_attention_heads * hd * h
        mlp = (3 if self.gated_mlp else 2) * h * f
        n = qkv + dense + mlp
        if self.has_bias:
            n += (self.num_attention_heads + 2 * self.num_query_groups) * hd + h + f + h + 4 * h
        else:
            n += 2 * h
        return n

    def param_count(self) -> int:
        emb = self.vocab_size * self.hidden_size
        n = self.num_layers * self.layer_param_count() + emb + self.hidden_size * (2 if self.has_bias else 1)
        if self.family == "gpt2":
            n += self.max_position_embeddings * self.hidden_size
        if not self.tie_embeddings:
            n += emb
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the dense matmuls plus attention scores and values."""
        return 6 * self.param_count() + 12 * self.num_layers * self.hidden_size * self.seq_length
