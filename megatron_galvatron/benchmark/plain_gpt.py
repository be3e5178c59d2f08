"""The GPT a user would write in plain PyTorch, for the baselines: torch.nn modules,
batch-first activations, default SDPA dispatch, and the usual loss on fp32 logits
(``F.cross_entropy(logits.float(), ...)``). Same architecture and parameter count as this
package's model for both families, so FLOPs per token and tokens/s compare directly;
``load_from`` copies the weights of a single-rank StageModel (tests check the losses agree).
The blocks' projections are nn.Linear so that torchao's float8 conversion (the ``+fp8``
baselines) finds them; on CUDA it needs their features divisible by 16 (hidden size, FFN size,
and heads x head_dim), which benchmark/float8.py checks.
"""
import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import nn

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.transformer_layer import apply_rope, rope_cache


class PlainBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, device, checkpoint: bool = False):
        super().__init__()
        h, hd, f = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
        self.cfg, self.checkpoint = cfg, checkpoint
        Norm = nn.LayerNorm if cfg.normalization == "LayerNorm" else nn.RMSNorm
        kw = {"eps": cfg.norm_eps, "device": device}
        self.ln_1, self.ln_2 = Norm(h, **kw), Norm(h, **kw)
        bias = cfg.add_bias_linear
        self.qkv = nn.Linear(h, (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd,
                             bias=bias or cfg.add_qkv_bias, device=device)
        self.proj = nn.Linear(cfg.num_attention_heads * hd, h, bias=bias, device=device)
        if cfg.swiglu:
            self.gate = nn.Linear(h, f, bias=bias, device=device)
            self.up = nn.Linear(h, f, bias=bias, device=device)
        else:
            self.fc = nn.Linear(h, f, bias=bias, device=device)
        self.down = nn.Linear(f, h, bias=bias, device=device)

    def attention(self, x: torch.Tensor, rope) -> torch.Tensor:
        b, s, _ = x.shape
        cfg, hd = self.cfg, self.cfg.head_dim
        nh, ng = cfg.num_attention_heads, cfg.num_query_groups
        q, k, v = self.qkv(x).split([nh * hd, ng * hd, ng * hd], dim=-1)
        q, k, v = q.view(b, s, nh, hd), k.view(b, s, ng, hd), v.view(b, s, ng, hd)
        if rope is not None:  # apply_rope rotates [seq, ...]; move seq first and back
            q = apply_rope(q.transpose(0, 1), rope).transpose(0, 1)
            k = apply_rope(k.transpose(0, 1), rope).transpose(0, 1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, enable_gqa=ng != nh)
        return self.proj(out.transpose(1, 2).reshape(b, s, nh * hd))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.fc(x), approximate="tanh"))

    def _forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), rope)
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        # Checkpointed inside forward, so that a compiled block compiles the checkpoint with it:
        # a checkpoint around a compiled block recomputes through another graph than the one the
        # forward saved from, and PyTorch refuses the mismatch (seen on LLaMA blocks).
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, rope, use_reentrant=False)
        return self._forward(x, rope)


class PlainGPT(nn.Module):
    """tokens [b, s], labels [b, s] -> mean loss."""

    def __init__(self, cfg: GPTConfig, device, checkpoint: bool = False):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.wte = nn.Embedding(cfg.vocab_size, h, device=device)
        if cfg.learned_positions:
            self.wpe = nn.Embedding(cfg.max_position_embeddings, h, device=device)
            self.rope = None
        else:
            self.register_buffer("rope", rope_cache(cfg, device), persistent=False)
        self.blocks = nn.ModuleList(PlainBlock(cfg, device, checkpoint) for _ in range(cfg.num_layers))
        Norm = nn.LayerNorm if cfg.normalization == "LayerNorm" else nn.RMSNorm
        self.ln_f = Norm(h, eps=cfg.norm_eps, device=device)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(h, cfg.vocab_size, bias=False, device=device)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens)
        if self.cfg.learned_positions:
            x = x + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x, self.rope)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight if self.lm_head is None else self.lm_head.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))

    @torch.no_grad()
    def load_from(self, stage) -> "PlainGPT":
        """Copy the weights of a single-rank StageModel (tp = 1: fused blocks are whole)."""
        cfg, v = self.cfg, stage.vocab
        self.wte.weight.copy_(v.word_embeddings.weight[: cfg.vocab_size])
        if cfg.learned_positions:
            self.wpe.weight.copy_(v.position_embeddings)
        if self.lm_head is not None:
            self.lm_head.weight.copy_(v.lm_head.weight[: cfg.vocab_size])
        _copy_norm(self.ln_f, v.final_norm)
        for mine, theirs in zip(self.blocks, stage.layers.values()):
            _copy_norm(mine.ln_1, theirs.input_norm)
            _copy_norm(mine.ln_2, theirs.post_attention_norm)
            _copy_linear(mine.qkv, theirs.attention.qkv)
            _copy_linear(mine.proj, theirs.attention.dense)
            if cfg.swiglu:
                for part, w in zip((mine.gate, mine.up), theirs.mlp.gate_up.weight.chunk(2, dim=0)):
                    part.weight.copy_(w)
                if cfg.add_bias_linear:
                    for part, b in zip((mine.gate, mine.up), theirs.mlp.gate_up.bias.chunk(2, dim=0)):
                        part.bias.copy_(b)
            else:
                _copy_linear(mine.fc, theirs.mlp.fc1)
            _copy_linear(mine.down, theirs.mlp.fc2)
        return self


def _copy_norm(dst: nn.Module, src) -> None:
    dst.weight.copy_(src.weight)
    if getattr(dst, "bias", None) is not None:
        dst.bias.copy_(src.bias)


def _copy_linear(dst: nn.Linear, src) -> None:
    dst.weight.copy_(src.weight)
    if dst.bias is not None:
        dst.bias.copy_(src.bias)
