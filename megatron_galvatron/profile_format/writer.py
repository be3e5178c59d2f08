"""Writing a profile: checked by the reader the search uses before it replaces any file."""
import json
import os
from typing import Dict

from megatron_galvatron.output_paths import remove_quietly
from megatron_galvatron.profile_format.reader import parse_hardware, parse_model
from megatron_galvatron.profile_format.schema import HARDWARE_FILE, MODEL_FILE


def _write(profile: Dict, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(profile, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:  # after a failed write or replace, no half-written file stays next to the profile
        remove_quietly(tmp)
    return path


def write_hardware(profile: Dict, out_dir: str, filename: str = HARDWARE_FILE) -> str:
    """Validate a hardware profile and write it as out_dir/filename; returns the path."""
    path = os.path.join(out_dir, filename)
    parse_hardware(profile, path)
    return _write(profile, path)


def write_model(profile: Dict, out_dir: str, filename: str = MODEL_FILE) -> str:
    """Validate a model profile (of any dtype) and write it as out_dir/filename; returns the path."""
    path = os.path.join(out_dir, filename)
    parse_model(profile, path, bf16_only=False)
    return _write(profile, path)
