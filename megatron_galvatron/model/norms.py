"""LayerNorm / RMSNorm whose parameters know they are replicated across the TP group."""
import torch
import torch.nn.functional as F
from torch import nn

from megatron_galvatron.tensor_parallel.layers import add_param


class Norm(nn.Module):
    def __init__(self, hidden: int, kind: str, eps: float, sequence_parallel: bool, device, dtype=torch.float32):
        super().__init__()
        self.kind, self.eps, self.hidden = kind, eps, hidden  # kind: LayerNorm or RMSNorm
        add_param(self, "weight", (hidden,), (hidden,), device, dtype, sequence_parallel=sequence_parallel)
        if kind == "LayerNorm":
            add_param(self, "bias", (hidden,), (hidden,), device, dtype, sequence_parallel=sequence_parallel)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "LayerNorm":
            return F.layer_norm(x, (self.hidden,), self.weight, self.bias, self.eps)
        return F.rms_norm(x, (self.hidden,), self.weight, self.eps)

