"""Bytes a forward pass keeps alive for backward, counted on any device.

Every tensor autograd saves passes through a saved-tensors pack hook; summing the storages
they live in (each once, parameters excluded) is what the forward leaves allocated for
backward, independent of the caching allocator. On CUDA the allocator's own view
(memory_allocated before and after the forward) is recorded beside it as a cross-check.
"""
from contextlib import nullcontext
from typing import Callable, Dict, Tuple

import torch
from torch import nn


def saved_bytes(module: nn.Module, run: Callable[[], torch.Tensor], autocast=None) -> Tuple[int, int]:
    """(bytes of unique saved storages, CUDA allocated-bytes delta or -1) of one forward `run()`.

    The delta excludes the output, which the next layer saves (and is counted there)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: Dict[int, int] = {}

    def count(t: torch.Tensor) -> None:
        if hasattr(t, "__tensor_flatten__"):  # a wrapper (a float8 tensor): its storage is its parts'
            for name in t.__tensor_flatten__()[0]:
                count(getattr(t, name))
            return
        st = t.untyped_storage()
        key = st.data_ptr()
        if key not in params and key not in seen:
            seen[key] = st.nbytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        count(t)
        return t

    device = next(module.parameters()).device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), (autocast or nullcontext)():
        out = run()
    delta = -1
    if cuda:
        torch.cuda.synchronize(device)
        delta = torch.cuda.memory_allocated(device) - before - out.untyped_storage().nbytes()
    del out
    return sum(seen.values()), delta


def allocator_stats(device: torch.device) -> Dict[str, float]:
    """Peak allocated / reserved since the last reset, and what the process holds on the GPU
    outside PyTorch's allocator (CUDA context, library workspaces)."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"max_allocated": torch.cuda.max_memory_allocated(device),
            "max_reserved": torch.cuda.max_memory_reserved(device),
            "reserved": torch.cuda.memory_reserved(device),
            "device_used": total - free}
