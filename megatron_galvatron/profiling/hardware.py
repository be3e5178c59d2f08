"""What a profile was measured on and with, and a timer that works on CPU and CUDA alike."""
import os
import platform
import shlex
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


def command_line() -> str:
    return shlex.join(sys.argv)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def nccl_version() -> Optional[str]:
    if not torch.cuda.is_available():
        return None
    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def describe(device: torch.device, num_gpus: int, num_nodes: int) -> Dict:
    """The "hardware" block both profiles carry. On CPU a "GPU" is one process."""
    return {
        "gpu_name": device_name(device),
        "device": device.type,
        "num_gpus": num_gpus,
        "num_nodes": num_nodes,
        "gpus_per_node": num_gpus // num_nodes,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": nccl_version(),
        "host": platform.node(),
        **({"memory_gb": torch.cuda.get_device_properties(device).total_memory / 2 ** 30}
           if device.type == "cuda" else {}),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds of GPU work between start() and stop() on the current stream (CUDA events),
    or wall time on CPU where every op is synchronous. Read it with seconds() after synchronize."""

    def __init__(self, device: torch.device, stream: Optional["torch.cuda.Stream"] = None):
        self.cuda = device.type == "cuda"
        self.stream = stream
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self._start.record(self.stream)
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._end.record(self.stream)
        else:
            self._t1 = time.perf_counter()

    def seconds(self) -> float:
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1e3
        return self._t1 - self._t0


class HostAhead:
    """Holds the GPU back (a spin kernel) while the host queues the work to be timed, so that
    CUDA events time the GPU's execution and not the host's pace of launching it. Without it,
    work smaller than its launch overhead (small messages, thin TP shards) would be timed as
    the Python and launch cost between kernels. No-op on CPU."""

    def __init__(self, device: torch.device):
        self.rate = 0.0  # spin cycles per second
        if device.type != "cuda" or not hasattr(torch.cuda, "_sleep"):
            return
        torch.cuda._sleep(1000)
        synchronize(device)
        sw = Stopwatch(device)
        cycles = 10_000_000
        sw.start()
        torch.cuda._sleep(cycles)
        sw.stop()
        self.rate = cycles / max(sw.seconds(), 1e-6)

    def hold(self, seconds: float) -> None:
        if self.rate:
            torch.cuda._sleep(int(min(seconds, 0.5) * self.rate))


def host_seconds(fn: Callable[[], object]) -> Tuple[float, object]:
    """Host time to issue fn (no synchronisation), and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: List[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def time_repeated(fn: Callable[[], None], device: torch.device, warmup: int, iters: int,
                  ahead: Optional[HostAhead] = None) -> float:
    """Median seconds of one call to fn, each call timed on its own."""
    host = 0.0
    for _ in range(warmup):
        host, _ = host_seconds(fn)
    synchronize(device)
    times = []
    for _ in range(iters):
        if ahead is not None:
            ahead.hold(2 * host + 5e-4)
        sw = Stopwatch(device)
        sw.start()
        host, _ = host_seconds(fn)
        sw.stop()
        times.append(sw.seconds())
    return median(times)
