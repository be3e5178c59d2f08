"""Errors a user can cause. CLIs print them as one line and exit non-zero, without a traceback."""
import os
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input the user can fix (config, flags, files); the message says how."""


class RankLocalError(UserError):
    """A UserError that only some ranks of a job see (their data, their stage): each prints it."""


def is_reporting_rank() -> bool:
    """Whether this process speaks for the job: rank 0 under torchrun, or a process on its own.
    Every rank checks the same flags and files, so one message is enough."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def exit_on_user_error(prog: str):
    """Turn a UserError raised inside the block into `prog: error: <message>` (on rank 0, or on
    every rank that sees a RankLocalError) and exit code 2 on every rank."""
    try:
        yield
    except UserError as e:
        if is_reporting_rank() or isinstance(e, RankLocalError):
            print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(2)
