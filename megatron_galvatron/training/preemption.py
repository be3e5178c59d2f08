"""Stopping a run early with a checkpoint: on SIGTERM or SIGINT (--exit-signal-handler), at a
multiple of --exit-interval, or once --exit-duration-in-mins have passed.

Every rank must stop after the same step, since the save that follows is collective. A signal
may reach only some ranks and clocks differ, so both are agreed by one all-reduce (MAX) of a
few flags over the world after each step; the iteration is the same everywhere and needs none.
"""
import signal
import time
from typing import List, Optional

import torch
import torch.distributed as dist

from megatron_galvatron.training.config import ResilienceConfig

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalFlag:
    """While entered, SIGTERM and SIGINT only note that they arrived: the step in progress
    finishes, and the training loop asks `received` after it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.received: Optional[int] = None
        self._previous = {}

    def _note(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self):
        if self.enabled:
            self._previous = {s: signal.signal(s, self._note) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def agree_any(flags: List[bool], group, device: torch.device) -> List[bool]:
    """Each flag true on any rank, on every rank: one all-reduce (MAX) of len(flags) numbers."""
    if group is None or not dist.is_initialized():
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return [bool(v) for v in t.tolist()]


class EarlyExit:
    """Why the run should stop after this step, if it should: the same answer on every rank.
    `started` is time.monotonic() at the start of the run (before the process group exists)."""

    def __init__(self, config: ResilienceConfig, started: float, flag: SignalFlag):
        self.config, self.started, self.flag = config, started, flag

    @property
    def needs_agreement(self) -> bool:
        return self.config.exit_signal_handler or self.config.exit_duration_mins is not None

    def local_flags(self) -> List[bool]:
        """(a signal arrived here, this rank's clock is past the budget)"""
        late = self.config.exit_duration_mins is not None and \
            time.monotonic() - self.started > 60 * self.config.exit_duration_mins
        return [self.flag.received is not None, late]

    def reason(self, iteration: int, agreed: List[bool]) -> Optional[str]:
        """`agreed` is local_flags() after agree_any (or unused when not needs_agreement)."""
        c = self.config
        if self.needs_agreement and agreed[0]:
            name = signal.Signals(self.flag.received).name if self.flag.received else "a signal"
            return f"{name} received" + ("" if self.flag.received else " by another rank")
        if self.needs_agreement and agreed[1]:
            return f"--exit-duration-in-mins {c.exit_duration_mins:g} passed"
        if c.exit_interval is not None and iteration % c.exit_interval == 0:
            return f"--exit-interval {c.exit_interval}"
        return None
