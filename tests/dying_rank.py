"""pretrain_gpt.py, except that one rank kills itself (SIGKILL) instead of running one iteration,
once: a test's stand-in for a machine lost mid-run. DYING_RANK and DYING_AT (the iteration it
does not run) say which and when; the file DYING_MARKER records that it happened, so that a
restarted run goes through."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pretrain_gpt  # noqa: E402
from megatron_galvatron.training import train as train_mod  # noqa: E402

_step = train_mod.train_step


def _dying_step(tr):
    marker = os.environ["DYING_MARKER"]
    if tr.ps.rank == int(os.environ["DYING_RANK"]) and tr.iteration + 1 == int(os.environ["DYING_AT"]) \
            and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(tr)


train_mod.train_step = _dying_step

if __name__ == "__main__":
    pretrain_gpt.main(sys.argv[1:])
