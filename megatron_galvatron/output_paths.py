"""Checks that an output can be written, made before the work that produces it: an hour of
profiling or search must not end in a traceback about the path."""
import os

from megatron_galvatron.errors import UserError


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_dir(flag: str, path: str) -> None:
    """`path` is, or can be created as, a writable directory."""
    if not path:
        raise UserError(f"{flag} is empty: give a directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a directory: give a directory")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise UserError(f"{flag} {path}: {base} is a file, so the directory cannot be created there")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {base} is not writable")


def check_output_file(flag: str, path: str) -> None:
    """`path` can be written as a file: not a directory, in an existing writable folder."""
    if not path:
        raise UserError(f"{flag} is empty: give a file path")
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory: give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is a file" if os.path.exists(folder) else "does not exist"
        raise UserError(f"{flag} {path}: folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UserError(f"{flag} {path} is not writable")


def remove_quietly(path: str) -> None:
    """Remove a temporary file a failed write left behind, if it is there."""
    try:
        os.remove(path)
    except OSError:
        pass
