"""Where a training step's GPU time goes: kernels from a torch.profiler trace grouped by kind
(matrix products, attention, normalisation, elementwise, optimizer, collectives), plus the
time the GPU computed nothing (gaps between compute kernels: host overhead, waits on
collectives or the CPU)."""
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

# First match wins: attention kernels often contain "gemm"-like words, so they come first.
CATEGORIES: List[Tuple[str, Tuple[str, ...]]] = [
    ("collective", ("nccl",)),
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn", "cudnn")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "wgmma", "cublas", "matmul", "sm90_")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm", ("layer_norm", "rms_norm", "layernorm", "rmsnorm")),
    ("compiled (triton)", ("triton",)),
    ("copy / cast", ("copy", "memcpy", "memset", "cat_", "catarray", "fill")),
    ("reduction", ("reduce",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled")),
]


def category(kernel_name: str) -> str:
    n = kernel_name.lower()
    for cat, keys in CATEGORIES:
        if any(k in n for k in keys):
            return cat
    return "other"


def busy_time(intervals: Iterable[Tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


@dataclass
class Breakdown:
    window_us: float
    compute_busy_us: float  # union of non-collective kernels
    by_category: Dict[str, float] = field(default_factory=dict)  # summed kernel time, us
    top: List[Tuple[str, float, int]] = field(default_factory=list)  # name, total us, calls

    def table(self, steps: int) -> str:
        w = self.window_us / steps
        rows = [f"per step: {w / 1e3:.1f} ms window, GPU computing {self.compute_busy_us / steps / 1e3:.1f} ms "
                f"({100 * self.compute_busy_us / self.window_us:.1f}%), idle of compute "
                f"{(self.window_us - self.compute_busy_us) / steps / 1e3:.1f} ms",
                f"{'category':<20} {'ms/step':>9} {'% window':>9}"]
        for cat, t in sorted(self.by_category.items(), key=lambda kv: -kv[1]):
            rows.append(f"{cat:<20} {t / steps / 1e3:>9.2f} {100 * t / self.window_us:>8.1f}%")
        rows.append("")
        rows.append(f"{'top kernels':<90} {'ms/step':>9} {'calls':>6}")
        for name, t, n in self.top:
            rows.append(f"{name[:90]:<90} {t / steps / 1e3:>9.2f} {n // steps:>6}")
        return "\n".join(rows)


def summarize(kernels: List[Tuple[str, float, float]], top: int = 25) -> Breakdown:
    """kernels: (name, start_us, end_us) of every GPU kernel in the profiled window."""
    if not kernels:
        return Breakdown(0.0, 0.0)
    start = min(k[1] for k in kernels)
    end = max(k[2] for k in kernels)
    by_cat: Dict[str, float] = {}
    by_name: Dict[str, List[float]] = {}
    for name, s, e in kernels:
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + (e - s)
        acc = by_name.setdefault(name, [0.0, 0])
        acc[0] += e - s
        acc[1] += 1
    busy = busy_time((s, e) for name, s, e in kernels if category(name) != "collective")
    tops = sorted(((n, t, c) for n, (t, c) in by_name.items()), key=lambda x: -x[1])[:top]
    return Breakdown(end - start, busy, by_cat, tops)


def kernels_of(prof) -> List[Tuple[str, float, float]]:
    """GPU kernels (name, start us, end us) from a finished torch.profiler.profile."""
    from torch.autograd import DeviceType
    out = []
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start:
            out.append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return out
