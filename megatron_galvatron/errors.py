"""Errors a user can cause. CLIs print them as one line and exit non-zero, without a traceback."""
import os
import sys
import time
from contextlib import contextmanager

# How long a rank other than 0 waits before it reports an error itself (see report_error).
RANK_GRACE_S = 10.0  # longer than ranks of one job start apart, even on a loaded machine


class UserError(Exception):
    """Bad input the user can fix (config, flags, files); the message says how."""


class RankLocalError(UserError):
    """A UserError that only some ranks of a job see (their data, their stage): each prints it."""


def report_error(prog: str, message: str, rank_local: bool = False) -> None:
    """Print `prog: error: message` as one line, once per job.

    Every rank checks the same flags and files, so rank 0 speaks for the job. The others wait
    first: torchrun ends them as soon as rank 0 exits (and, were they to exit first, it would
    end rank 0 before it could print). A rank still alive after the wait failed on its own, and
    says so itself, with its rank."""
    rank = os.environ.get("RANK")
    if rank not in (None, "0") and not rank_local:
        time.sleep(RANK_GRACE_S)
        message = f"(rank {rank}) {message}"
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


@contextmanager
def exit_on_user_error(prog: str):
    """Turn a UserError raised inside the block into one line (report_error) and exit code 2."""
    try:
        yield
    except UserError as e:
        report_error(prog, str(e), isinstance(e, RankLocalError))
        sys.exit(2)
