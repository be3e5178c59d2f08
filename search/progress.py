"""Progress of a search as plain lines on stderr (a log or a CI console keeps them readable),
at most one every few seconds, with an estimate of the time left."""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


class Progress:
    def __init__(self, enabled: bool = True, stream: Optional[TextIO] = None, every_s: float = 2.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.clock = clock
        self.start = self.last = self.solving_since = clock()

    def _due(self) -> Optional[float]:
        now = self.clock()
        if not self.enabled or now - self.last < self.every_s:
            return None
        self.last = now
        return now - self.start

    def bounds(self, done: int, total: int) -> None:
        """The bounds of `done` of `total` candidates computed (before any is solved)."""
        elapsed = self._due()
        if elapsed is not None:
            print(f"search: bounds of {done}/{total} candidates, {elapsed:.0f} s, about "
                  f"{elapsed / max(done, 1) * (total - done):.0f} s to the first solve", file=self.stream, flush=True)

    def begin_solving(self) -> None:
        self.solving_since = self.clock()

    def report(self, solved: int, left: Callable[[], int], seen: int, total: int) -> None:
        """`solved` candidates solved so far, `left()` of them still to solve as far as is known
        now (the time left assumes so, at the mean time per solve until now; called only when a
        line is due), `seen` of `total` candidates visited."""
        elapsed = self._due()
        if elapsed is None:
            return
        left = left()
        per_solve = (self.clock() - self.solving_since) / max(solved, 1)
        eta = f", about {per_solve * left:.0f} s left" if solved else ""
        print(f"search: {seen}/{total} candidates visited, {solved} solved, about {left} to solve; "
              f"{elapsed:.0f} s{eta}", file=self.stream, flush=True)
