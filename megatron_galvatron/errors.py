"""Errors a user can cause. CLIs print them as one line and exit non-zero, without a traceback."""
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input the user can fix (config, flags, files); the message says how."""


@contextmanager
def exit_on_user_error(prog: str):
    """Turn a UserError raised inside the block into `prog: error: <message>` and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
