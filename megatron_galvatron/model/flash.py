"""Optional flash-attn kernel (used with --use-flash-attn when the package is installed)."""
import torch

from megatron_galvatron.errors import UserError


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention on q [b, heads, s, d], k/v [b, groups, s, d] -> [b, heads, s, d]."""
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        raise UserError("--use-flash-attn needs the flash-attn package (pip install flash-attn); "
                        "drop the flag to use PyTorch's scaled_dot_product_attention") from None
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=True)
    return out.transpose(1, 2)
