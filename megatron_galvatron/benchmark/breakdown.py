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


@dataclass(frozen=True)
class Gap:
    at_us: float     # where it starts, from the window's start
    length_us: float
    before: str      # the compute kernel that ended last before it
    after: str       # the one that starts it again


def idle_gaps(kernels: List[Tuple[str, float, float]], origin: float = 0.0) -> List[Gap]:
    """Holes in the union of the kernels' intervals (placed from `origin`), each with the kernels
    on either side (which say whether the GPU waited on the host, a collective or the optimizer)."""
    if not kernels:
        return []
    ordered = sorted(kernels, key=lambda k: k[1])
    gaps, last_name, end = [], ordered[0][0], ordered[0][2]
    for name, s, e in ordered[1:]:
        if s > end:
            gaps.append(Gap(end - origin, s - end, last_name, name))
        if e >= end:
            end, last_name = e, name
    return gaps


@dataclass
class Breakdown:
    window_us: float
    compute_busy_us: float  # union of non-collective kernels
    by_category: Dict[str, float] = field(default_factory=dict)  # summed kernel time, us
    top: List[Tuple[str, float, int]] = field(default_factory=list)  # name, total us, calls
    gaps: List[Gap] = field(default_factory=list)  # idle of compute, in the window's order

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
        if self.gaps:
            rows += ["", self.gap_table(steps)]
        return "\n".join(rows)

    def gap_table(self, steps: int, longest: int = 15) -> str:
        """Idle of compute by gap length (many short gaps: the host launches too slowly; a few long
        ones: waits), then the longest gaps with the kernels around them."""
        bins = [(0.0, 20.0), (20.0, 100.0), (100.0, 1000.0), (1000.0, float("inf"))]
        rows = [f"{'compute idle, gaps of':<22} {'count/step':>10} {'ms/step':>9}"]
        for lo, hi in bins:
            inside = [g.length_us for g in self.gaps if lo <= g.length_us < hi]
            label = f"{lo:.0f}-{hi:.0f} us" if hi != float("inf") else f">= {lo:.0f} us"
            rows.append(f"{label:<22} {len(inside) / steps:>10.1f} {sum(inside) / steps / 1e3:>9.2f}")
        rows.append(f"longest gaps (ms from window start, ms): kernel before -> kernel after")
        for g in sorted(self.gaps, key=lambda g: -g.length_us)[:longest]:
            rows.append(f"  {g.at_us / 1e3:9.2f} {g.length_us / 1e3:7.2f}  {g.before[:60]} -> {g.after[:60]}")
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
    compute = [k for k in kernels if category(k[0]) != "collective"]
    busy = busy_time((s, e) for name, s, e in compute)
    tops = sorted(((n, t, c) for n, (t, c) in by_name.items()), key=lambda x: -x[1])[:top]
    return Breakdown(end - start, busy, by_cat, tops, idle_gaps(compute, start))


def kernels_of(prof) -> List[Tuple[str, float, float]]:
    """GPU kernels (name, start us, end us) from a finished torch.profiler.profile. Ranges that
    record_function marks on the GPU timeline (FSDP's, the optimizer's) span kernels and waits
    alike: they are left out."""
    from torch.autograd import DeviceType
    out = []
    for e in prof.events():
        if getattr(e, "is_user_annotation", False):
            continue
        if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start:
            out.append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return out


def launchers(prof, pattern: str, frames: int = 4) -> str:
    """Which host code launched the GPU work whose name contains `pattern` (e.g. "Memcpy HtoD":
    a copy from host memory can make the host wait for the GPU): each distinct chain of
    operators with the innermost Python frames of the profile (``with_stack=True``), and how
    many times it ran."""
    seen: Dict[Tuple[str, Tuple[str, ...]], List[float]] = {}
    for e in prof.events():
        if e.name == "Command Buffer Full":  # the profiler's marker of a full launch queue, not host code
            continue
        hits = [k for k in getattr(e, "kernels", []) if pattern.lower() in k.name.lower()]
        if not hits:
            continue
        chain, parent = [e.name], e.cpu_parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        stack = tuple(f for f in (getattr(e, "stack", None) or []) if "torch/" not in f)[:frames]
        acc = seen.setdefault((" < ".join(chain[:6]), stack), [0, 0.0])
        acc[0] += 1
        acc[1] += sum(k.duration for k in hits)
    rows = [f"host code that launched '{pattern}':"]
    for (chain, stack), (n, us) in sorted(seen.items(), key=lambda kv: -kv[1][0]):
        rows.append(f"  {n} x, {us / 1e3:.2f} ms: {chain}")
        rows += [f"      {f}" for f in stack]
    return "\n".join(rows)
