"""The tokenizer files a checkpoint names, so that an export can ship them beside the weights.

meta.json's ``tokenizer`` field maps each file's Hugging Face name (tokenizer.json, vocab.json,
tokenizer.model, ...) to where it was found and its sha256: the files stay where the run read
them (a tokenizer.json is megabytes, every save would copy it), and an export copies each one
that is still there unchanged. They come from the imported Hugging Face folder, or from the
run's tokenizer flags, which replace those: the run's tokenizer is the one its data was made with.
"""
import hashlib
import os
import shutil
from typing import Dict, List, Optional

from megatron_galvatron.errors import UserError

# The files of a Hugging Face folder that describe its tokenizer (and how it generates: its
# bos/eos/pad ids), copied as they are; nothing else is ever named or written.
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
            "vocab.json", "merges.txt", "tokenizer.model", "generation_config.json")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record(files: Dict[str, str]) -> Optional[dict]:
    """meta.json's tokenizer field for {HF name: path}; None when there is none."""
    if not files:
        return None
    return {"files": {name: {"path": os.path.abspath(p), "sha256": _sha256(p)} for name, p in sorted(files.items())}}


def from_hf_folder(hf_dir: str) -> Optional[dict]:
    return record({n: os.path.join(hf_dir, n) for n in HF_FILES if os.path.isfile(os.path.join(hf_dir, n))})


def from_flags(tokenizer_type: Optional[str], tokenizer_model: Optional[str], vocab_file: Optional[str],
               merge_file: Optional[str]) -> Optional[dict]:
    """The files Megatron's tokenizer flags name, under the names transformers looks for."""
    files = {}
    if vocab_file:
        files["vocab.json"] = vocab_file
    if merge_file:
        files["merges.txt"] = merge_file
    if tokenizer_model:
        if os.path.isdir(tokenizer_model):  # a folder holding tokenizer.json (and maybe its config)
            files.update({n: os.path.join(tokenizer_model, n) for n in HF_FILES
                          if os.path.isfile(os.path.join(tokenizer_model, n))})
        elif tokenizer_type == "SentencePieceTokenizer" or tokenizer_model.endswith(".model"):
            files["tokenizer.model"] = tokenizer_model
        else:
            files["tokenizer.json"] = tokenizer_model
    for name, path in files.items():
        if not os.path.isfile(path):
            raise UserError(f"tokenizer file {path} ({name}) not found: fix the tokenizer flag that names it")
    return record(files)


def from_args(args) -> Optional[dict]:
    """from_flags of a parsed command line (the tokenizer flags are optional on it)."""
    return from_flags(*(getattr(args, k, None) for k in ("tokenizer_type", "tokenizer_model", "vocab_file",
                                                          "merge_file")))


def check(value) -> Optional[str]:
    """What is wrong with a meta.json tokenizer field, or None."""
    files = value.get("files") if isinstance(value, dict) else None
    if not isinstance(files, dict) or set(value) != {"files"}:
        return "is not {\"files\": {...}}"
    for name, f in files.items():
        if name not in HF_FILES:
            return f"names {str(name)[:40]!r}, not one of {', '.join(HF_FILES)}"
        if not (isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str)):
            return f"entry {name!r} is not {{\"path\", \"sha256\"}}"
    return None


def copy_into(value: Optional[dict], out_dir: str) -> List[str]:
    """Copy the files a tokenizer field names into out_dir; a warning for each one that moved or changed."""
    warnings = []
    for name, f in sorted(((value or {}).get("files") or {}).items()):
        src = f["path"]
        if not os.path.isfile(src):
            warnings.append(f"tokenizer file {src} is gone: {name} is not in the export; copy it there yourself")
        elif _sha256(src) != f["sha256"]:
            warnings.append(f"tokenizer file {src} changed since the run read it: {name} is not in the export")
        else:
            shutil.copyfile(src, os.path.join(out_dir, name))
    return warnings
