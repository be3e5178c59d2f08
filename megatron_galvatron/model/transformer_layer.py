"""One decoder layer (attention + MLP) running under its own TP group.

Activations are [seq, batch, hidden]: replicated over the TP group, or split along the
sequence when the layer uses sequence parallelism (Megatron's inside the TP group, or
Ulysses': whole parameters, heads exchanged for sequence around attention).
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.norms import Norm
from megatron_galvatron.model.rope_scaling import llama3_scaled
from megatron_galvatron.parallel_state import LayerGroups
from megatron_galvatron.sequence_parallel.ulysses import exchange_qkv, heads_to_seq, kv_replication
from megatron_galvatron.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron_galvatron.tensor_parallel.random import RNGTracker

_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def sdpa_priority(name: str):
    """A context that makes SDPA try ``name``'s kernel first, the others after it (a kernel
    that cannot take the inputs, e.g. cuDNN on an older GPU, falls through to the next)."""
    if name == "default":
        return nullcontext()
    first = _BACKENDS[name]
    return sdpa_kernel([first] + [b for b in _BACKENDS.values() if b != first], set_priority=True)


def rope_cache(cfg: GPTConfig, device) -> torch.Tensor:
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim))
    if cfg.use_rope_scaling:
        inv = llama3_scaled(inv, cfg)
    pos = torch.arange(cfg.max_position_embeddings, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return torch.stack([emb.cos(), emb.sin()])  # [2, positions, head_dim]


def apply_rope(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (the Hugging Face LLaMA convention) on x [s, b, heads, head_dim]."""
    s = x.shape[0]
    cos = cache[0, :s].view(s, 1, 1, -1).to(x.dtype)
    sin = cache[1, :s].view(s, 1, 1, -1).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, groups: LayerGroups, sp: bool, tracker: RNGTracker, device):
        super().__init__()
        tp = groups.tp
        self.cfg, self.tracker = cfg, tracker
        self.seq_group, self.group_size = groups.seq_group, groups.ulysses or 1
        u = self.group_size
        self.kv_copies = kv_replication(cfg.num_query_groups, u) if u > 1 else 1
        # heads and K/V heads this rank attends over (after the all-to-all under Ulysses)
        self.heads = cfg.num_attention_heads // (tp * u)
        self.groups_local = cfg.num_query_groups * self.kv_copies // (tp * u)
        hd = cfg.head_dim
        blocks = (cfg.num_attention_heads * hd, cfg.num_query_groups * hd, cfg.num_query_groups * hd)
        # A qkv bias is cut with the same blocks as the weight: each TP rank holds its heads' biases.
        self.qkv = ColumnParallelLinear(cfg.hidden_size, sum(blocks), groups.tp_group,
                                        bias=cfg.add_bias_linear or cfg.add_qkv_bias,
                                        sequence_parallel=sp, blocks=blocks, device=device)
        self.dense = RowParallelLinear(cfg.num_attention_heads * hd, cfg.hidden_size, groups.tp_group,
                                       bias=cfg.add_bias_linear, sequence_parallel=sp, device=device)
        if cfg.position_embedding_type == "rope":
            self.register_buffer("rope", rope_cache(cfg, device), persistent=False)
        else:
            self.rope = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hd = self.cfg.head_dim
        qkv = self.qkv(x)
        s, b = qkv.shape[0], qkv.shape[1]
        u = self.group_size
        n, g = self.heads * u, self.groups_local * u // self.kv_copies  # heads in qkv's output
        q, k, v = qkv.split([n * hd, g * hd, g * hd], dim=-1)
        q, k, v = q.view(s, b, n, hd), k.view(s, b, g, hd), v.view(s, b, g, hd)
        if self.seq_group is not None:  # whole sequence from here, so RoPE sees global positions
            q, k, v = exchange_qkv(q, k, v, self.seq_group, self.kv_copies)
            s = q.shape[0]
        if self.rope is not None:
            q, k = apply_rope(q, self.rope), apply_rope(k, self.rope)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, hd]
        p = self.cfg.attention_dropout if self.training else 0.0
        gqa = self.groups_local != self.heads
        with self.tracker.fork() if p > 0 else nullcontext():  # local heads: masks differ across TP ranks
            if self.cfg.use_flash_attn:
                from megatron_galvatron.model.flash import flash_attention
                out = flash_attention(q, k, v, p)
            else:
                with sdpa_priority(self.cfg.attention_backend):
                    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, enable_gqa=gqa)
        out = out.permute(2, 0, 1, 3)  # [s, b, heads, hd]
        if self.seq_group is not None:
            out = heads_to_seq(out, self.seq_group)
        return self.dense(out.reshape(out.shape[0], b, n * hd))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, groups: LayerGroups, sp: bool, device):
        super().__init__()
        f, h = cfg.ffn_hidden_size, cfg.hidden_size
        self.gated, bias = cfg.swiglu, cfg.add_bias_linear
        if self.gated:
            self.gate_up = ColumnParallelLinear(h, 2 * f, groups.tp_group, bias=bias, sequence_parallel=sp,
                                                blocks=(f, f), device=device)
        else:
            self.fc1 = ColumnParallelLinear(h, f, groups.tp_group, bias=bias, sequence_parallel=sp, device=device)
        self.fc2 = RowParallelLinear(f, h, groups.tp_group, bias=bias, sequence_parallel=sp, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * up)
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: GPTConfig, groups: LayerGroups, sp: bool, seed: int, device, layer_idx: int = 0):
        super().__init__()
        self.cfg, self.groups, self.sp = cfg, groups, sp
        # sequence-sharded or head-split activations need masks that differ per rank of the group
        self.sharded_sequence = groups.layout.sp
        self.tracker = RNGTracker(seed, groups.rng_rank, device, stream=1 + layer_idx)
        kind = cfg.normalization
        self.input_norm = Norm(cfg.hidden_size, kind, cfg.norm_eps, sp, device)
        self.attention = Attention(cfg, groups, sp, self.tracker, device)
        self.post_attention_norm = Norm(cfg.hidden_size, kind, cfg.norm_eps, sp, device)
        self.mlp = MLP(cfg, groups, sp, device)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.hidden_dropout
        if p == 0 or not self.training:
            return x
        if self.sharded_sequence:  # sequence shards differ per rank of the group, so must their masks
            with self.tracker.fork():
                return F.dropout(x, p, True)
        return F.dropout(x, p, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._dropout(self.attention(self.input_norm(x)))
        return x + self._dropout(self.mlp(self.post_attention_norm(x)))
