"""Hugging Face model folders <-> our checkpoints.

A folder is config.json plus the weights as model.safetensors, pytorch_model.bin, or either one
sharded with its *.index.json. Tensors are read lazily (memory-mapped) and passed one at a time
to the family's mapping (hf_gpt2, hf_llama, hf_qwen2) and on to the writer, so a conversion holds about
one output file's worth of tensors in memory, not the whole model. Every tensor is checked
against the shape the config implies; any problem with the folder is a one-line UserError.
"""
import json
import os
import pickle
import shutil
import sys
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from megatron_galvatron.checkpoint import tokenizer_files
from megatron_galvatron.checkpoint.architecture import config_record
from megatron_galvatron.checkpoint.format import converted_meta
from megatron_galvatron.checkpoint.tensors import TensorReader, open_verified, write_checkpoint
from megatron_galvatron.convert import hf_gpt2, hf_llama, hf_qwen2
from megatron_galvatron.errors import UserError
from megatron_galvatron.json_file import field, read_object
from megatron_galvatron.model.config import ARCHITECTURE_FIELDS, GPTConfig

FAMILIES = {"gpt2": hf_gpt2, "llama": hf_llama, "qwen2": hf_qwen2}  # by config.json's model_type
HF_SHARD_BYTES = 4 << 30


def read_hf_config(hf_dir: str) -> Tuple[dict, object]:
    """(config.json as a dict, the family module that converts it)."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isdir(hf_dir):
        raise UserError(f"{hf_dir} is not a directory: point --hf-dir at a Hugging Face model folder")
    if not os.path.isfile(path):
        raise UserError(f"{hf_dir} has no config.json: point --hf-dir at a Hugging Face model folder "
                        f"(config.json + model.safetensors or pytorch_model.bin)")
    config = read_object(path, "Hugging Face config", "re-download or fix it")
    kind = config.get("model_type")
    if not isinstance(kind, str) or kind not in FAMILIES:
        archs = config.get("architectures")
        raise UserError(f"{path}: model_type {kind!r} (architectures {archs}) is not supported: this converter "
                        f"handles {', '.join(FAMILIES)}")
    return config, FAMILIES[kind]


def _tie(config: dict, family) -> bool:
    return field(config, "tie_word_embeddings", bool, default=family is hf_gpt2,
                 error=lambda msg: UserError(f"config.json: {msg}"))


class HFWeights:
    """Lazy, validated access to a folder's tensors under the family's normalized names."""

    def __init__(self, hf_dir: str, family):
        self.hf_dir, self.family = hf_dir, family
        self.where: Dict[str, Tuple[str, str]] = {}  # normalized name -> (file, stored name)
        self.shapes: Dict[str, tuple] = {}
        self._open: Dict[str, object] = {}
        files = self._files()
        for path in files:
            for key in self._keys(path):
                name = family.normalize_key(key)
                if name is None:
                    continue
                if name in self.where:
                    raise UserError(f"{hf_dir} stores {name} twice: the folder mixes checkpoints")
                self.where[name] = (path, key)

    def _files(self):
        d = self.hf_dir
        for single, index in (("model.safetensors", "model.safetensors.index.json"),
                              ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            if os.path.isfile(os.path.join(d, single)):
                return [os.path.join(d, single)]
            if os.path.isfile(os.path.join(d, index)):
                path = os.path.join(d, index)
                weight_map = field(read_object(path, "shard index", "re-download it"), "weight_map", dict,
                                   error=lambda msg: UserError(f"{path}: {msg}: re-download it"))
                if not all(isinstance(n, str) for n in weight_map.values()):
                    raise UserError(f"{path}: weight_map must map tensor names to shard file names: re-download it")
                names = sorted(set(weight_map.values()))
                for n in names:
                    if os.path.basename(n) != n or not os.path.isfile(os.path.join(d, n)):
                        raise UserError(f"{path} lists shard {n!r}, which is not in {d}: the download is incomplete")
                return [os.path.join(d, n) for n in names]
        raise UserError(f"{d} has no model.safetensors or pytorch_model.bin (nor a sharded *.index.json): "
                        f"the weights are missing")

    def _handle(self, path: str):
        if path not in self._open:
            if path.endswith(".safetensors"):
                from safetensors import safe_open
                try:
                    self._open[path] = safe_open(path, framework="pt")
                except Exception as e:  # safetensors has its own error type
                    raise UserError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0]}): it is "
                                    f"corrupt or truncated; re-download it")
            else:
                self._open[path] = _load_bin(path)
        return self._open[path]

    def _keys(self, path: str):
        h = self._handle(path)
        return list(h.keys())

    def check(self, required: Dict[str, tuple], optional: Dict[str, tuple]) -> None:
        missing = sorted(set(required) - set(self.where))
        if missing:
            raise UserError(f"{self.hf_dir} lacks {len(missing)} tensor(s) its config.json implies, e.g. "
                            f"{missing[0]}: the weights do not match the config")
        unexpected = sorted(set(self.where) - set(required) - set(optional))
        if unexpected:
            raise UserError(f"{self.hf_dir} holds tensor(s) this converter does not know, e.g. {unexpected[0]}: "
                            f"the model is not a plain {self.family.ARCHITECTURE}")
        self.shapes = {**required, **optional}

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> torch.Tensor:
        path, key = self.where[name]
        h = self._handle(path)
        try:
            t = h.get_tensor(key) if path.endswith(".safetensors") else h[key]
        except Exception as e:
            raise UserError(f"cannot read {key} from {path} ({str(e).splitlines()[0]}): the file is corrupt; "
                            f"re-download it")
        if tuple(t.shape) != tuple(self.shapes[name]):
            raise UserError(f"{name} in {path} has shape {tuple(t.shape)} but config.json implies "
                            f"{tuple(self.shapes[name])}: the weights do not match the config")
        if not t.is_floating_point():
            raise UserError(f"{name} in {path} has dtype {t.dtype}, not a floating-point weight")
        return t.to(torch.float32)


def _load_bin(path: str):
    """A pytorch_model.bin state dict, tensors only (weights_only: no code is unpickled)."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip format cannot be mapped
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable PyTorch weights file ({str(e).splitlines()[0][:120]}): it is "
                        f"corrupt or truncated; re-download it")
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    return sd


def hf_to_ours(hf_dir: str, save_root: str) -> Tuple[str, GPTConfig]:
    """Convert a Hugging Face folder into a checkpoint under save_root (iteration 0, no optimizer
    state); returns its directory and model config."""
    config, family = read_hf_config(hf_dir)
    try:
        cfg = family.config_from_hf(config)
    except UserError as e:  # the model's own checks name our flags; say which file holds the value
        raise UserError(f"{os.path.join(hf_dir, 'config.json')}: {e}")
    tie = _tie(config, family)
    weights = HFWeights(hf_dir, family)
    weights.check(*family.hf_shapes(cfg, tie))
    meta = converted_meta(config_record(cfg),
                          source={"hf_dir": os.path.abspath(hf_dir), "architectures": config.get("architectures")},
                          hf_config=config)
    tokenizer = tokenizer_files.from_hf_folder(hf_dir)
    if tokenizer:
        meta["tokenizer"] = tokenizer
    items = (("model/" + k, t.contiguous()) for k, t in family.to_ours(cfg, weights.get, weights.has))
    return write_checkpoint(save_root, meta, items), cfg


def ours_to_hf(load: str, out_dir: str, shard_bytes: int = HF_SHARD_BYTES) -> GPTConfig:
    """Write a checkpoint as a folder transformers' from_pretrained loads (float32 weights)."""
    d, meta, cfg = open_verified(load)
    if cfg.family not in ("gpt2", "llama"):  # the architecture fields mix the two families' presets
        fields = ", ".join(f"{k}={getattr(cfg, k)}" for k in ARCHITECTURE_FIELDS)
        raise UserError(f"this checkpoint's architecture ({fields}) is neither GPT2LMHeadModel's nor "
                        f"LlamaForCausalLM's / Qwen2ForCausalLM's, so it cannot be exported")
    model_type = export_type(cfg)
    family = FAMILIES[model_type]
    base = meta.get("hf_config")
    config = family.hf_config(cfg, base if isinstance(base, dict) and base.get("model_type") == model_type else None)
    config["torch_dtype"] = "float32"
    if "dtype" in config:
        config["dtype"] = "float32"
    reader = TensorReader(d, meta)
    warnings = write_hf_folder(out_dir, config, family.to_hf(cfg, lambda name: reader.get("model/" + name)),
                               shard_bytes, meta.get("tokenizer"))
    reader.close()
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr, flush=True)
    return cfg


def export_type(cfg: GPTConfig) -> str:
    """The Hugging Face model_type that holds this architecture: biases on q/k/v alone are Qwen2's
    (LLaMA's attention_bias puts one on o_proj too)."""
    if cfg.family == "llama" and cfg.add_qkv_bias:
        return "qwen2"
    return cfg.family


def write_hf_folder(out_dir: str, config: dict, items: Iterable[Tuple[str, torch.Tensor]],
                    shard_bytes: int = HF_SHARD_BYTES, tokenizer: Optional[dict] = None) -> List[str]:
    """config.json + model.safetensors (or model-0000k-of-0000n.safetensors and an index) and the
    tokenizer files a checkpoint's tokenizer field names, written in a temporary folder that is
    renamed into place; an existing non-empty out_dir is refused. Returns warnings on tokenizer
    files that could not be copied."""
    from safetensors.torch import save_file
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UserError(f"{out_dir} exists and is not an empty directory: choose a new --hf-dir")
    parent = os.path.dirname(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".tmp-{os.path.basename(os.path.abspath(out_dir))}-{os.getpid()}")
    try:
        os.makedirs(tmp)
        shards, pending, size, total = [], {}, 0, 0

        def flush():
            nonlocal pending, size
            if pending:
                name = f"part-{len(shards):05d}.safetensors"
                save_file(pending, os.path.join(tmp, name), metadata={"format": "pt"})
                shards.append((name, list(pending)))
                pending, size = {}, 0

        for key, t in items:
            pending[key] = t.contiguous()
            size += t.numel() * t.element_size()
            total += t.numel() * t.element_size()
            if size >= shard_bytes:
                flush()
        flush()
        if len(shards) == 1:
            os.rename(os.path.join(tmp, shards[0][0]), os.path.join(tmp, "model.safetensors"))
        else:
            weight_map = {}
            for i, (name, keys) in enumerate(shards):
                final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                os.rename(os.path.join(tmp, name), os.path.join(tmp, final))
                weight_map.update({k: final for k in keys})
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        warnings = tokenizer_files.copy_into(tokenizer, tmp)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
        return warnings
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {out_dir}: {e.strerror or e}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
