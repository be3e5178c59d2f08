"""A checkpoint whose meta.json or files were altered is refused with one line, never trusted:
each case below damages a copy of a real checkpoint (written by pretrain_gpt.py) the way the
fuzzer did, and both the library (read_meta + verify, a CheckpointError) and pretrain_gpt.py
(exit 2, one stderr line, no traceback) must refuse it. Cases that rewrite meta.json re-sign it
with a valid meta_sha256, so it is the schema that has to catch them, not the checksum."""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_galvatron import checkpoint
from megatron_galvatron.checkpoint import format as fmt
from megatron_galvatron.checkpoint.tensors import write_tensors
from tests.pretrain_in_process import pretrain_in_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["--mock-data", "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
         "--vocab-size", "61", "--global-batch-size", "4", "--lr-decay-style", "constant", "--seed", "5"]
IT = "iter_0000002"
SHARD = "r00000-000.safetensors"


def _main(*argv):
    """pretrain_gpt.main in this process: (exit code, stdout, stderr)."""
    return pretrain_in_process([*MODEL, *argv])


def _meta(d):
    with open(os.path.join(d, IT, fmt.META)) as f:
        return json.load(f)


def _resign(d, change):
    """Rewrite meta.json after change(meta), with a valid meta_sha256 over the result."""
    meta = _meta(d)
    change(meta)
    with open(os.path.join(d, IT, fmt.META), "wb") as f:
        f.write(fmt.encode(meta))


def _raw(d, change):
    """Rewrite meta.json's bytes, checksum left as it was."""
    path = os.path.join(d, IT, fmt.META)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(change(data))


def _flip(path, pos, bit=0x10):
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ bit]))


def _outside(d, name):
    """A file list entry naming `name`, pointing at a copy of the shard placed there."""
    def change(meta):
        info = meta["files"].pop(SHARD)
        meta["files"][name] = info
        for t in meta["tensors"].values():
            if t["file"] == SHARD:
                t["file"] = name
    return change


def _symlink(d):
    shard = os.path.join(d, IT, SHARD)
    outside = os.path.join(d, "elsewhere.safetensors")
    shutil.move(shard, outside)
    os.symlink(outside, shard)  # same bytes, same sha256: only the link gives it away


def _deep(text_depth):
    def change(data):
        nest = b"[" * text_depth + b"]" * text_depth
        return data.replace(b'"saved_at":', b'"hf_config": {"x": ' + nest + b'}, "saved_at":', 1)
    return change


def _nan_shard(d):
    """Put a NaN into a weight and re-sign everything, as a diverged run of old code would have."""
    from safetensors.torch import load_file
    path = os.path.join(d, IT, SHARD)
    tensors = load_file(path)
    key = next(k for k in sorted(tensors) if k.startswith("model/") and tensors[k].ndim == 2)
    tensors[key][0, 0] = float("nan")
    info = write_tensors(path, tensors)
    _resign(d, lambda m: m["files"].__setitem__(SHARD, info))
    return key


def _unversioned(meta):
    del meta["format_version"], meta["meta_sha256"]


def _legacy(d, change=None):
    """A version-1 meta.json (no format_version, no meta_sha256), as the code before wrote."""
    meta = _meta(d)
    _unversioned(meta)
    if change:
        change(meta)
    with open(os.path.join(d, IT, fmt.META), "w") as f:
        f.write(json.dumps(meta, indent=1) + "\n")


CASES = {
    "files_empty": (lambda d: _resign(d, lambda m: m.update(files={})), "files is empty"),
    "dotdot": (lambda d: _resign(d, _outside(d, "../" + SHARD)), "not a file of a checkpoint directory"),
    "absolute": (lambda d: _resign(d, _outside(d, os.path.join(d, "x.safetensors"))),
                 "not a file of a checkpoint directory"),
    "subdir": (lambda d: _resign(d, _outside(d, "sub/" + SHARD)), "not a file of a checkpoint directory"),
    "symlink_outside": (_symlink, "is not a plain file inside"),
    "negative_iteration": (lambda d: _resign(d, lambda m: m.update(iteration=-1)), "iteration is -1"),
    "negative_consumed": (lambda d: _resign(d, lambda m: m.update(consumed_samples=-8)), "consumed_samples is -8"),
    "iteration_string": (lambda d: _resign(d, lambda m: m.update(iteration="2")), "iteration is '2'"),
    "bytes_string": (lambda d: _resign(d, lambda m: m["files"][SHARD].update(bytes="9")), ".bytes is '9'"),
    "sha_not_hex": (lambda d: _resign(d, lambda m: m["files"][SHARD].update(sha256="x" * 64)), "64 lowercase hex"),
    "hidden_size_string": (lambda d: _resign(d, lambda m: m["model"].update(hidden_size="32")),
                           "model.hidden_size is '32'"),
    "plan_list": (lambda d: _resign(d, lambda m: m.update(plan=[1, 2])), "plan is a list"),
    "world_size_zero": (lambda d: _resign(d, lambda m: m.update(world_size=0)), "world_size is 0"),
    "files_list": (lambda d: _resign(d, lambda m: m.update(files=[SHARD])), "files is a list"),
    "tensor_unlisted_file": (lambda d: _resign(d, lambda m: next(iter(m["tensors"].values())).update(
        file="r00009-000.safetensors")), "not a safetensors file listed in files"),
    "unknown_field": (lambda d: _resign(d, lambda m: m.update(verify=False)), "unknown field"),
    "unknown_version": (lambda d: _resign(d, lambda m: None) or _raw(
        d, lambda b: b.replace(b'"format_version": 2', b'"format_version": 3')), "format_version 3"),
    "bit_flip_shard": (lambda d: _flip(os.path.join(d, IT, SHARD), os.path.getsize(os.path.join(d, IT, SHARD)) - 100),
                       "sha256"),
    "bit_flip_meta": (lambda d: _raw(d, lambda b: b.replace(b'"iteration": 2', b'"iteration": 6')),
                      "does not match its meta_sha256"),
    "same_meaning_edit": (lambda d: _raw(d, lambda b: b.replace(b'1e-05', b'1E-05', 1)), "byte for byte"),
    "checksum_removed": (lambda d: _resign(d, lambda m: None) or _raw(
        d, lambda b: b[:b.index(b',\n "meta_sha256"')] + b"\n}\n"), "lacks meta_sha256"),
    "non_utf8": (lambda d: _raw(d, lambda b: b.replace(b'"gpt2"', b'"gpt\xff"', 1)), "is not UTF-8"),
    "meta_directory": (lambda d: os.remove(os.path.join(d, IT, fmt.META)) or os.mkdir(os.path.join(d, IT, fmt.META)),
                       "is not a regular file"),
    "deep_nesting_parser": (lambda d: _raw(d, _deep(100000)), "nests too deeply"),
    "deep_nesting_signed": (lambda d: _resign(d, lambda m: m.update(hf_config=json.loads("[" * 40 + "]" * 40))),
                            "nests deeper than"),
    "unlisted_shard": (lambda d: shutil.copy(os.path.join(d, IT, SHARD), os.path.join(d, IT, "r00001-000.safetensors")),
                       "is not listed in meta.json"),
    "legacy_files_empty": (lambda d: _legacy(d, lambda m: m.update(files={})), "files is empty"),
    "legacy_bit_flip_shard": (lambda d: _legacy(d) or _flip(os.path.join(d, IT, SHARD), 4000), "sha256"),
    "nan_weight": (_nan_shard, "holds NaN or Inf"),
}
# A few go through a real pretrain_gpt.py process, to see the whole CLI: one line, no traceback.
SUBPROCESS = ("deep_nesting_parser", "non_utf8", "nan_weight")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    base = tmp_path_factory.mktemp("tamper")
    root = str(base / "ckpt")
    rc, _, err = _main("--train-iters", "2", "--save", root)
    assert rc == 0, err
    return base, root


def _copy(saved, case):
    base, root = saved
    d = str(base / case)
    shutil.copytree(root, d, symlinks=True)
    return d


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_checkpoint_is_refused_in_one_line(saved, case):
    damage, expected = CASES[case]
    d = _copy(saved, case)
    damage(d)
    with pytest.raises(checkpoint.CheckpointError) as e:  # the library
        it = checkpoint.resolve(d)
        checkpoint.read_model_tensors(it)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    argv = ["--train-iters", "4", "--load", d, "--save", d]
    if case in SUBPROCESS:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *MODEL, *argv],
                           capture_output=True, text=True, timeout=300)
        rc, err = p.returncode, p.stderr
    else:
        rc, _, err = _main(*argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("pretrain_gpt.py: error: "), err
    assert expected in lines[0] and "Traceback" not in err, lines[0]
    added = {"elsewhere.safetensors"} if case == "symlink_outside" else set()
    assert set(os.listdir(d)) == set(os.listdir(saved[1])) | added  # no save ran


@pytest.mark.parametrize("content", [b"[" * 100000 + b"]" * 100000, b'{"torch": 5}', b'[1, 2]'])
def test_signed_but_malformed_rng_file_is_one_line(saved, content):
    """An RNG file that meta.json lists with its true sha256, but whose content is not RNG state."""
    d = _copy(saved, "rng_%d" % len(content))
    path = os.path.join(d, IT, "rng_r00000.json")
    with open(path, "wb") as f:
        f.write(content)
    info = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    _resign(d, lambda m: m["files"].__setitem__("rng_r00000.json", info))
    rc, _, err = _main("--train-iters", "4", "--load", d, "--save", d)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "rng_r00000.json is corrupt" in lines[0], err


def test_single_bit_flips_of_meta_json_are_refused(saved):
    """3000 random (byte, bit) flips of meta.json (~17 kB; every byte takes 40 s here). Any edit
    that still parses changes either the content (meta_sha256) or the rendering (re-rendered and
    compared), so every one must be refused: this samples that argument."""
    d = _copy(saved, "sweep")
    path = os.path.join(d, IT, fmt.META)
    with open(path, "rb") as f:
        original = f.read()
    rng, accepted = random.Random(0), []
    for _ in range(3000):
        pos = rng.randrange(len(original))
        flipped = bytearray(original)
        flipped[pos] ^= 1 << rng.randrange(8)
        with open(path, "wb") as f:
            f.write(flipped)
        try:
            checkpoint.read_meta(os.path.join(d, IT))
            accepted.append(pos)
        except checkpoint.CheckpointError as e:
            assert "\n" not in str(e)
    assert not accepted, [original[max(0, p - 20):p + 20] for p in accepted[:5]]


def test_version_1_checkpoint_loads_with_its_files_verified_and_a_warning(saved):
    d = _copy(saved, "legacy")
    _legacy(d)
    meta, params = checkpoint.read_model_tensors(d)
    assert meta["iteration"] == 2 and params
    rc, out, err = _main("--train-iters", "3", "--load", d, "--save", d)
    assert rc == 0, err
    assert "has no meta_sha256" in out
    assert checkpoint.latest_iteration(d) == 3  # the new save is in the current format
    assert checkpoint.read_meta(checkpoint.resolve(d))["format_version"] == fmt.FORMAT_VERSION


def test_written_meta_json_carries_version_and_its_checksum(saved):
    meta = _meta(saved[1])
    assert meta["format_version"] == fmt.FORMAT_VERSION
    assert meta["meta_sha256"] == fmt.meta_sha256(meta)
    assert set(meta["files"]) == {f for f in os.listdir(os.path.join(saved[1], IT)) if f != fmt.META}
    assert all(torch.isfinite(t).all() for t in checkpoint.read_model_tensors(saved[1])[1].values())


@pytest.mark.parametrize("case", ["non_utf8", "checksum_removed", "legacy_files_empty", "architecture"])
def test_a_bad_load_stops_before_the_model_is_built(saved, case, monkeypatch):
    """What meta.json alone shows wrong (its bytes, its schema, the architecture) is refused
    before any model is built for the run."""
    d = _copy(saved, "early_" + case)
    argv = ["--train-iters", "4", "--load", d, "--save", d]
    if case == "architecture":
        argv = [a if a != "32" else "64" for a in MODEL] + argv  # another --hidden-size
        expected = "--hidden-size 32 (this run: 64)"
    else:
        damage, expected = CASES[case]
        damage(d)

    def no_model(*args):
        raise AssertionError("a model was built before --load was checked")
    monkeypatch.setattr("megatron_galvatron.training.train.StageModel", no_model)
    rc, _, err = pretrain_in_process(argv) if case == "architecture" else _main(*argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and expected in lines[0], err
