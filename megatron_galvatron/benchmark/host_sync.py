"""Find host synchronisation inside a training step: a `.item()`, a blocking copy, anything that
makes the CPU wait for the GPU stops it from queueing the next kernels, and the GPU idles while it
catches up. CUDA's synchronisation check (``torch.cuda.set_sync_debug_mode("warn")``) flags each
such call; this records them with the Python stack that made them."""
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

# The text of the warning torch.cuda.set_sync_debug_mode("warn") raises.
SYNC_WARNING = "called a synchronizing CUDA operation"
# The frames a report names first: this package's, its entry point's and its tools'.
OWN = ("megatron_galvatron/", "pretrain_gpt.py", "tools/check_host_sync.py", "tools/benchmark.py")


@dataclass(frozen=True)
class HostSync:
    where: str                # the innermost frame in this package (else the innermost frame)
    stack: Tuple[str, ...]    # the innermost frames, innermost last


def _frames(stack: List[traceback.FrameSummary], keep: int = 6) -> HostSync:
    frames = [f for f in stack if "/warnings.py" not in f.filename and f.filename != __file__]
    text = [f"{f.filename}:{f.lineno} {f.name}" for f in frames]
    own = [t for t in text if any(k in t for k in OWN)]
    return HostSync(own[-1] if own else (text[-1] if text else "?"), tuple(text[-keep:]))


def host_syncs(step: Callable[[], None], steps: int, set_mode=None) -> List[HostSync]:
    """Run `step` `steps` times with the synchronisation check on; every synchronising call, with
    where it came from. (Calls made by the backward's worker threads are reported at the
    backward's caller, where the autograd engine replays their warnings.)"""
    set_mode = set_mode or torch.cuda.set_sync_debug_mode
    found: List[HostSync] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            found.append(_frames(traceback.extract_stack()[:-1]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        set_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            set_mode("default")
    return found


def describe(found: List[HostSync], steps: int) -> str:
    if not found:
        return f"no host synchronisation in {steps} steps"
    rows = [f"{len(found)} host synchronisations in {steps} steps:"]
    stacks = {s.where: s.stack for s in found}
    for where, n in Counter(s.where for s in found).most_common():
        rows.append(f"  {n} x at {where}")
        rows += [f"      {frame}" for frame in stacks[where]]
    return "\n".join(rows)
