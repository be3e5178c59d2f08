"""A rank that died (or is silent past --distributed-timeout-minutes) makes the collectives of
the others fail. They stop with one line naming the failure instead of a backend traceback, and
with exit status 3 (2 is a user error), which a launcher such as torchrun counts as a failure
to restart from."""
import os
import re
import sys
from contextlib import contextmanager

import torch.distributed as dist

PEER_EXIT_CODE = 3


def is_peer_failure(e: BaseException) -> bool:
    # gloo reports a closed, reset or timed-out connection as a plain RuntimeError naming its
    # transport's source file; NCCL and the store raise torch.distributed's own error types.
    dist_error = getattr(dist, "DistError", ())
    return isinstance(e, dist_error) or (isinstance(e, RuntimeError) and "/gloo/" in str(e))


def describe(e: BaseException) -> str:
    """The backend's message in a few words: its first sentence, without the source location."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", lines[0].strip())
    return text.split(". ")[0].rstrip(".")


@contextmanager
def exit_on_peer_failure(prog: str):
    """Turn a collective's failure for a lost peer, raised inside the block, into one line,
    `prog: error: a peer rank stopped (<what the backend saw>); exiting`, and exit status 3."""
    try:
        yield
    except RuntimeError as e:
        if not is_peer_failure(e):
            raise
        print(f"{prog}: error: a peer rank stopped ({describe(e)}); exiting", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Not sys.exit: the run's process groups are still alive here, and left to interpreter
        # shutdown a gloo thread can abort the process (see pretrain_gpt.main), losing the status.
        os._exit(PEER_EXIT_CODE)
