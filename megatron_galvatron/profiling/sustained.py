"""How much slower layers run inside a long step than in the profiler's short timings: a
chain of layers run back to back until the GPU settles at its power cap, and again with the GPU
idle part of the time (model.json 'sustained')."""
import time
from typing import Any, Callable, Dict, List, Sequence

import torch

from megatron_galvatron.profiling.hardware import Stopwatch, median, synchronize


def run_at_duty(chain: Callable[[], None], stopwatch: Callable[[], Any], sync: Callable[[], None],
                seconds: float, duty: float, busy_s: float) -> List[float]:
    """Seconds of each `chain` run for `seconds`, each followed by an idle gap that keeps the
    device busy a fraction `duty` of the time when a chain takes `busy_s`: the host waits for the
    chain to finish, then sleeps, so the device has nothing queued."""
    idle = busy_s * (1.0 - duty) / duty
    watches = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(watches) < 4:
        sw = stopwatch()
        sw.start()
        chain()
        sw.stop()
        sync()
        watches.append(sw)
        time.sleep(idle)
    return [w.seconds() for w in watches]


def measure_sustained(chain: Callable[[], None], device: torch.device, seconds: float, duties: Sequence[float],
                      alone: float) -> Dict:
    """Run `chain` back to back for `seconds`, then at each duty cycle of `duties`; the slowdown is
    the median of the last half of the repeats over `alone`, the chain's time from the per-point
    timings."""
    watches = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(watches) < 4:
        sw = Stopwatch(device)
        sw.start()
        chain()
        sw.stop()
        watches.append(sw)
    synchronize(device)
    sustained = median([w.seconds() for w in watches[len(watches) // 2:]])
    duty = []
    for u in duties:
        busy = run_at_duty(chain, lambda: Stopwatch(device), lambda: synchronize(device), seconds, u, sustained)
        chain_s = median(busy[len(busy) // 2:])
        idle = sustained * (1.0 - u) / u
        # the chain runs faster at a lower duty, so the duty it had is a little below u
        duty.append([chain_s / (chain_s + idle), max(1.0, chain_s / alone)])
    times = [w.seconds() for w in watches]
    q = max(1, len(times) // 4)
    return {"slowdown": max(1.0, sustained / alone), "chain_s": sustained, "alone_s": alone,
            **({"duty": duty} if duty else {}),
            # drift over the run: a still-falling clock shows as later quarters slower
            "quarters_s": [median(times[i * q:(i + 1) * q] or times[-1:]) for i in range(4)],
            "repeats": len(watches)}
