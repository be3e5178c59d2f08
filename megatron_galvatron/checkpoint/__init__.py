"""Checkpoints that do not depend on the plan that wrote them: every tensor is stored once,
whole, under its canonical name, so any plan and world size loads them (format.py has the
layout, integrity.py and schema.py how a checkpoint is read without being trusted, atomic.py how a
save is published, lock.py the one writer of a save root, save.py / load.py the collective paths)."""
from megatron_galvatron.checkpoint.format import CheckpointError
from megatron_galvatron.checkpoint.integrity import latest_iteration, read_meta, resolve, verify
from megatron_galvatron.checkpoint.load import inspect, load
from megatron_galvatron.checkpoint.save import check_writable, lock_save_root, save
from megatron_galvatron.checkpoint.state import Loaded, Progress, TrainingState
from megatron_galvatron.checkpoint.tensors import read_model_tensors

__all__ = ["CheckpointError", "Loaded", "Progress", "TrainingState", "check_writable", "inspect", "latest_iteration",
           "load",
           "lock_save_root", "read_meta", "read_model_tensors", "resolve", "save", "verify"]
