"""Throughput, MFU and memory readings for the iteration log."""
import resource
from typing import Optional

import torch

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment.
_PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("A100", 312e12), ("A800", 312e12),
              ("L40S", 362e12), ("A10", 125e12), ("V100", 125e12)]


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(name: str) -> Optional[float]:
    """By device name, e.g. a hardware profile's gpu_name."""
    for frag, peak in _PEAK_BF16:
        if frag in name:
            return peak
    return None


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (process RSS)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
