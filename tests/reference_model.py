"""An independent single-process GPT-2 / LLaMA in plain PyTorch, written from the papers'
definitions, used as the ground truth for every distributed test. It reads canonical full
tensors by name and shares no code with the package's model."""
import math

import torch
import torch.nn.functional as F


def _rope(x, theta):
    # x [b, heads, s, d]; rotate-half convention
    b, h, s, d = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(s, dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


_FP8 = {"tensorwise": ("e4m3", "e5m2", False), "rowwise": ("e4m3", "e4m3", True)}  # (forward, grads, 2^k scales)


def _fp8(t, fmt, axis, pow2):
    """t rounded to float8 (saturating) under a dynamic scale from its amax (per slice along
    ``axis``, or of the whole tensor), returned dequantized."""
    dtype = torch.float8_e4m3fn if fmt == "e4m3" else torch.float8_e5m2
    fmax = torch.finfo(dtype).max
    amax = t.abs().amax() if axis is None else t.abs().amax(dim=axis, keepdim=True)
    scale = (fmax / amax.double().clamp(min=1e-12)).float().double()  # scales are float32
    if pow2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    return (t * scale).clamp(-fmax, fmax).to(dtype).to(t.dtype) / scale


class _Fp8Matmul(torch.autograd.Function):
    """x [tokens, K] @ w.t() with both operands in float8, and both backward matmuls too
    (the output gradient in float8): rowwise scales run along each matmul's reduction dim."""

    @staticmethod
    def forward(ctx, x, w, recipe):
        fwd, grad, pow2 = _FP8[recipe]
        row = recipe == "rowwise"
        ctx.save_for_backward(x, w)
        ctx.recipe = recipe
        return _fp8(x, fwd, -1 if row else None, pow2) @ _fp8(w.t(), fwd, 0 if row else None, pow2)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        fwd, grad, pow2 = _FP8[ctx.recipe]
        row = ctx.recipe == "rowwise"
        gx = _fp8(g, grad, -1 if row else None, pow2) @ _fp8(w.t(), fwd, -1 if row else None, pow2).t()
        gw = _fp8(g, grad, 0 if row else None, pow2).t() @ _fp8(x, fwd, 0 if row else None, pow2)
        return gx, gw, None


def reference_loss(params, tokens, labels, cfg, fp8=None, query_block=None):
    """Mean next-token loss. params: name -> tensor (requires_grad as the caller wishes);
    tokens, labels [batch, seq]; cfg: dict with family, num_layers, heads, groups, eps, theta, and
    optionally the architecture keys that override the family's (normalization, position_embedding_type,
    swiglu, add_bias_linear, tie_embeddings); fp8: per layer, the float8 recipe of its linears or None; query_block: attention scored that
    many queries at a time against the keys up to them (the same softmax, without a seq x seq
    matrix, for long sequences under no_grad)."""
    gpt2 = cfg["family"] == "gpt2"
    layer_norm = cfg.get("normalization", "LayerNorm" if gpt2 else "RMSNorm") == "LayerNorm"
    learned = cfg.get("position_embedding_type", "learned_absolute" if gpt2 else "rope") == "learned_absolute"
    swiglu = cfg.get("swiglu", not gpt2)
    biases = cfg.get("add_bias_linear", gpt2)
    tied = cfg.get("tie_embeddings", gpt2)
    n_h, n_g = cfg["num_attention_heads"], cfg["num_query_groups"]
    eps = cfg.get("norm_eps", 1e-5)
    b, s = tokens.shape
    x = params["vocab.word_embeddings.weight"][tokens]
    if learned:
        x = x + params["vocab.position_embeddings"][:s]

    def norm(t, prefix):
        w = params[prefix + ".weight"]
        if layer_norm:
            mu = t.mean(-1, keepdim=True)
            var = ((t - mu) ** 2).mean(-1, keepdim=True)
            return (t - mu) / torch.sqrt(var + eps) * w + params[prefix + ".bias"]
        return t * torch.rsqrt((t * t).mean(-1, keepdim=True) + eps) * w

    def lin(t, prefix, bias=True):
        recipe = fp8[int(prefix.split(".")[1])] if fp8 and prefix.startswith("layers.") else None
        w = params[prefix + ".weight"]
        if recipe:
            y = _Fp8Matmul.apply(t.reshape(-1, t.shape[-1]), w, recipe).reshape(*t.shape[:-1], w.shape[0])
        else:
            y = t @ w.t()
        if biases and bias:
            y = y + params[prefix + ".bias"]
        return y

    hidden = x.shape[-1]
    hd = hidden // n_h
    mask = None if query_block else torch.full((s, s), float("-inf")).triu(1)
    for i in range(cfg["num_layers"]):
        p = f"layers.{i}."
        h = norm(x, p + "input_norm")
        qkv = lin(h, p + "attention.qkv")
        q, k, v = qkv.split([n_h * hd, n_g * hd, n_g * hd], dim=-1)
        q = q.view(b, s, n_h, hd).transpose(1, 2)
        k = k.view(b, s, n_g, hd).transpose(1, 2)
        v = v.view(b, s, n_g, hd).transpose(1, 2)
        if not learned:
            q, k = _rope(q, cfg.get("rope_theta", 10000.0)), _rope(k, cfg.get("rope_theta", 10000.0))
        rep = n_h // n_g
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        if query_block:
            o = _blocked_attention(q, k, v, query_block).transpose(1, 2).reshape(b, s, n_h * hd)
        else:
            att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
            o = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, n_h * hd)
        x = x + lin(o, p + "attention.dense")
        h = norm(x, p + "post_attention_norm")
        if swiglu:
            gate, up = lin(h, p + "mlp.gate_up").chunk(2, dim=-1)
            m = (gate * torch.sigmoid(gate)) * up
        else:
            u = lin(h, p + "mlp.fc1")
            m = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        x = x + lin(m, p + "mlp.fc2")
    x = norm(x, "vocab.final_norm")
    head = params["vocab.word_embeddings.weight"] if tied else params["vocab.lm_head.weight"]
    logits = x @ head.t()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def _blocked_attention(q, k, v, block):
    """Causal softmax(q k^T / sqrt(d)) v, `block` queries at a time; query i sees keys 0..i."""
    s, hd = q.shape[2], q.shape[3]
    out = []
    diagonal = torch.full((block, block), float("-inf"), dtype=q.dtype).triu(1)  # keys past the query
    for i in range(0, s, block):
        j = min(s, i + block)
        att = (q[:, :, i:j] @ k[:, :, :j].transpose(-1, -2)) / math.sqrt(hd)
        att[..., i:j] += diagonal[:j - i, :j - i]
        out.append(att.softmax(-1) @ v[:, :, :j])
    return torch.cat(out, dim=2)


def reference_train(params, batches, cfg, steps, lr, weight_decay, clip, betas=(0.9, 0.95), eps=1e-8,
                    chunks=1, fp8=None):
    """AdamW steps, each over its batch in ``chunks`` equal micro-batches (the same in exact
    arithmetic unless float8 scales, taken per micro-batch, are in play). batches: list (per
    step) of (tokens, labels). Returns (losses, grads of step 0, grad norms, params after all steps)."""
    ps = {k: v.clone().double().requires_grad_(True) for k, v in params.items()}
    decay = [v for k, v in ps.items() if v.ndim >= 2 and not k.endswith("position_embeddings")]
    no_decay = [v for k, v in ps.items() if not (v.ndim >= 2 and not k.endswith("position_embeddings"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
    losses, norms, grads0 = [], [], None
    for step in range(steps):
        tokens, labels = batches[step]
        opt.zero_grad()
        loss = 0.0
        for t, lab in zip(tokens.chunk(chunks), labels.chunk(chunks)):
            part = reference_loss(ps, t, lab, cfg, fp8) / chunks
            part.backward()
            loss = loss + part.detach()
        norms.append(torch.nn.utils.clip_grad_norm_(list(ps.values()), clip).item())
        if step == 0:  # after clipping, as the optimizer sees them
            grads0 = {k: v.grad.detach().clone() for k, v in ps.items()}
        opt.step()
        losses.append(loss.item())
    return losses, grads0, norms, {k: v.detach() for k, v in ps.items()}
