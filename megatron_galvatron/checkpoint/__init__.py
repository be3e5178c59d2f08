"""Checkpoints that do not depend on the plan that wrote them: every tensor is stored once,
whole, under its canonical name, so any plan and world size loads them (format.py has the
layout, atomic.py how a save is published, save.py / load.py the collective paths)."""
from megatron_galvatron.checkpoint.architecture import check_config, config_from_record, config_record, model_flags
from megatron_galvatron.checkpoint.format import (CheckpointError, latest_iteration, read_meta, resolve, same_plan,
                                                  verify)
from megatron_galvatron.checkpoint.load import load
from megatron_galvatron.checkpoint.save import check_writable, save
from megatron_galvatron.checkpoint.state import Loaded, Progress, TrainingState
from megatron_galvatron.checkpoint.tensors import TensorReader, open_verified, read_model_tensors, write_checkpoint

__all__ = ["CheckpointError", "Loaded", "Progress", "TensorReader", "TrainingState", "check_config",
           "check_writable", "config_from_record", "config_record", "latest_iteration", "load", "model_flags",
           "open_verified", "read_meta", "read_model_tensors", "resolve", "same_plan", "save", "verify",
           "write_checkpoint"]
