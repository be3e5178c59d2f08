"""Optional packages: a missing one costs its feature and one line saying how to get it, never a traceback."""
import importlib
import sys
from types import ModuleType
from typing import Optional


def import_optional(module: str, purpose: str, install: str) -> Optional[ModuleType]:
    """``module`` if it imports; otherwise None after one line on stderr naming ``install``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"note: {purpose} skipped: {module.split('.')[0]} is not installed ({install})",
              file=sys.stderr, flush=True)
        return None
