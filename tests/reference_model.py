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


def reference_loss(params, tokens, labels, cfg):
    """Mean next-token loss. params: name -> tensor (requires_grad as the caller wishes);
    tokens, labels [batch, seq]; cfg: dict with family, num_layers, heads, groups, eps, theta."""
    fam = cfg["family"]
    n_h, n_g = cfg["num_attention_heads"], cfg["num_query_groups"]
    eps = cfg.get("norm_eps", 1e-5)
    b, s = tokens.shape
    x = params["vocab.word_embeddings.weight"][tokens]
    if fam == "gpt2":
        x = x + params["vocab.position_embeddings"][:s]

    def norm(t, prefix):
        w = params[prefix + ".weight"]
        if fam == "gpt2":
            mu = t.mean(-1, keepdim=True)
            var = ((t - mu) ** 2).mean(-1, keepdim=True)
            return (t - mu) / torch.sqrt(var + eps) * w + params[prefix + ".bias"]
        return t * torch.rsqrt((t * t).mean(-1, keepdim=True) + eps) * w

    def lin(t, prefix, bias=True):
        y = t @ params[prefix + ".weight"].t()
        if fam == "gpt2" and bias:
            y = y + params[prefix + ".bias"]
        return y

    hidden = x.shape[-1]
    hd = hidden // n_h
    mask = torch.full((s, s), float("-inf")).triu(1)
    for i in range(cfg["num_layers"]):
        p = f"layers.{i}."
        h = norm(x, p + "input_norm")
        qkv = lin(h, p + "attention.qkv")
        q, k, v = qkv.split([n_h * hd, n_g * hd, n_g * hd], dim=-1)
        q = q.view(b, s, n_h, hd).transpose(1, 2)
        k = k.view(b, s, n_g, hd).transpose(1, 2)
        v = v.view(b, s, n_g, hd).transpose(1, 2)
        if fam == "llama":
            q, k = _rope(q, cfg.get("rope_theta", 10000.0)), _rope(k, cfg.get("rope_theta", 10000.0))
        rep = n_h // n_g
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, n_h * hd)
        x = x + lin(o, p + "attention.dense")
        h = norm(x, p + "post_attention_norm")
        if fam == "llama":
            gate, up = lin(h, p + "mlp.gate_up", bias=False).chunk(2, dim=-1)
            m = (gate * torch.sigmoid(gate)) * up
        else:
            u = lin(h, p + "mlp.fc1")
            m = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        x = x + lin(m, p + "mlp.fc2")
    x = norm(x, "vocab.final_norm")
    head = params["vocab.word_embeddings.weight"] if fam == "gpt2" else params["vocab.lm_head.weight"]
    logits = x @ head.t()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def reference_train(params, batches, cfg, steps, lr, weight_decay, clip, betas=(0.9, 0.95), eps=1e-8):
    """Full-batch AdamW steps. batches: list (per step) of (tokens, labels).
    Returns (losses, grads of step 0, grad norms, params after all steps)."""
    ps = {k: v.clone().double().requires_grad_(True) for k, v in params.items()}
    decay = [v for k, v in ps.items() if v.ndim >= 2 and not k.endswith("position_embeddings")]
    no_decay = [v for k, v in ps.items() if not (v.ndim >= 2 and not k.endswith("position_embeddings"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
    losses, norms, grads0 = [], [], None
    for step in range(steps):
        tokens, labels = batches[step]
        opt.zero_grad()
        loss = reference_loss(ps, tokens, labels, cfg)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(list(ps.values()), clip).item())
        if step == 0:  # after clipping, as the optimizer sees them
            grads0 = {k: v.grad.detach().clone() for k, v in ps.items()}
        opt.step()
        losses.append(loss.item())
    return losses, grads0, norms, {k: v.detach() for k, v in ps.items()}
