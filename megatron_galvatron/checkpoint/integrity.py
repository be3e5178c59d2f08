"""Reading a checkpoint without trusting it: `latest` resolved, meta.json checked against its own
sha256 and the schema, and every file it names verified by size and sha256. Nothing a
checkpoint holds can switch a check off: an empty file list is refused, every listed file is
verified, and a shard or RNG file that meta.json does not list is refused too."""
import hashlib
import os
import stat
from typing import Optional, Tuple

from megatron_galvatron.checkpoint.format import (FORMAT, FORMAT_VERSION, LATEST, META, RNG_RE, SHARD_RE,
                                                  CheckpointError, meta_sha256, render)
from megatron_galvatron.checkpoint.schema import MAX_DEPTH, check_meta, depth
from megatron_galvatron.errors import UserError
from megatron_galvatron.json_file import read_json

MAX_META_BYTES = 256 << 20  # a 100k-tensor index is ~20 MB; more is not a meta.json


def resolve(path: str) -> Optional[str]:
    """The checkpoint directory `path` names (itself, or what its `latest` points to); None if
    `path` holds no checkpoint at all."""
    if os.path.lexists(os.path.join(path, META)):  # lexists: a meta.json that is no file is refused, not skipped
        return path
    pointer = os.path.join(path, LATEST)
    if not os.path.exists(pointer):
        return None
    try:
        with open(pointer) as f:
            name = f.read(4096).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {pointer} ({type(e).__name__}): point --load at an iter_* "
                              f"directory instead")
    if not name or os.path.basename(name) != name or name.startswith("."):
        raise CheckpointError(f"{pointer} is corrupt (holds {name[:40]!r}): write the name of a complete "
                              f"iter_* directory into it or point --load at one")
    d = os.path.join(path, name)
    if not os.path.lexists(os.path.join(d, META)):
        raise CheckpointError(f"{pointer} names {name}, which has no {META} (incomplete or deleted): "
                              f"point --load at a complete iter_* directory")
    return d


def _parse(path: str) -> Tuple[object, bytes]:
    hint = "the checkpoint is corrupt; load an older one"
    try:
        st = os.lstat(path)
    except OSError as e:
        raise CheckpointError(f"{path} is unreadable or corrupt ({e.strerror or e}): load an older checkpoint")
    if not stat.S_ISREG(st.st_mode):  # a link could lead anywhere outside the checkpoint
        raise CheckpointError(f"{path} is not a regular file (a directory or a link): {hint}")
    return read_json(path, META, hint, CheckpointError, MAX_META_BYTES)


def read_meta(d: str) -> dict:
    """meta.json of the checkpoint directory d, checked against its sha256 and the schema."""
    path = os.path.join(d, META)
    meta, raw = _parse(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (format "
                              f"{str(meta.get('format'))[:60] if isinstance(meta, dict) else None!r})")
    if depth(meta) > MAX_DEPTH:
        raise CheckpointError(f"{path} nests deeper than {MAX_DEPTH} levels: the checkpoint is corrupt; "
                              f"load an older one")
    if "format_version" in meta:
        version = meta["format_version"]
        if type(version) is not int or version != FORMAT_VERSION:
            raise CheckpointError(f"{path} has format_version {str(version)[:20]}, which this code does not read "
                                  f"(it reads {FORMAT_VERSION}, and 1 without the field): load it with the "
                                  f"megatron_galvatron that wrote it")
        if "meta_sha256" not in meta:
            raise CheckpointError(f"{path} lacks meta_sha256: the checkpoint is corrupt; load an older one")
        if meta["meta_sha256"] != meta_sha256(meta):
            raise CheckpointError(f"{path} does not match its meta_sha256 (it changed after it was written): "
                                  f"the checkpoint is corrupt; load an older one")
    elif "meta_sha256" in meta:
        raise CheckpointError(f"{path} has meta_sha256 but no format_version: the checkpoint is corrupt; "
                              f"load an older one")
    if raw != render(meta):
        raise CheckpointError(f"{path} is not byte for byte as it was written (it was edited): the checkpoint "
                              f"is corrupt; load an older one")
    check_meta(meta, path)
    return meta


def is_unsummed(meta: dict) -> bool:
    """A version-1 meta.json: from before meta_sha256, so its own bytes cannot be verified."""
    return "format_version" not in meta


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def verify(d: str, meta: dict, rank: int = 0, world: int = 1) -> None:
    """Every listed file present, a plain file inside d, of its saved size; no unlisted shard or
    RNG file; the sha256 of every world-th file from `rank` on, so that the ranks of a load
    together hash every file once (collective.agree makes one rank's failure everyone's)."""
    files = meta["files"]
    try:
        present = os.listdir(d)
    except OSError as e:
        raise CheckpointError(f"cannot list {d}: {e.strerror or e}")
    extra = sorted(f for f in present if (SHARD_RE.fullmatch(f) or RNG_RE.fullmatch(f) or f.endswith(".safetensors"))
                   and f not in files)
    if extra:
        raise CheckpointError(f"{os.path.join(d, extra[0])} is not listed in {META}: a file was added to the "
                              f"checkpoint or its {META} was replaced; load an older checkpoint")
    real = os.path.realpath(d)
    for i, (fname, info) in enumerate(sorted(files.items())):
        path = os.path.join(d, fname)
        try:
            st = os.lstat(path)
        except OSError:
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; load an older one")
        if not stat.S_ISREG(st.st_mode) or os.path.dirname(os.path.realpath(path)) != real:
            raise CheckpointError(f"{path} is not a plain file inside {d} (a link or a directory): "
                                  f"the checkpoint is corrupt; load an older one")
        if st.st_size != info["bytes"]:
            raise CheckpointError(f"{path} has {st.st_size} bytes but was saved with {info['bytes']}: the file is "
                                  f"truncated or corrupt; load an older checkpoint")
        if i % world == rank and _sha256(path) != info["sha256"]:
            raise CheckpointError(f"{path} does not match its saved sha256: the file is corrupt; "
                                  f"load an older checkpoint")


def latest_iteration(root: str) -> Optional[int]:
    try:
        d = resolve(root)
        return None if d is None else int(read_meta(d)["iteration"])
    except UserError:
        return None
