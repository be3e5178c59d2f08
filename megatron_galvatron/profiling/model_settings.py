"""What tools/profile_model.py measures: the settings of one model profile and their defaults."""
from dataclasses import dataclass
from typing import List, Tuple

import torch

from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig

DTYPES = ("bf16", "fp32")


@dataclass
class ModelSettings:
    micro_batch_sizes: List[int]
    seq_lengths: List[int]
    tp_degrees: List[int]
    sequence_parallel: bool = True
    dtype: str = "bf16"
    warmup: int = 2
    iters: int = 5
    soak_seconds: float = 0.3  # back-to-back untimed repeats before each timed point (CUDA only)
    # the long-step run that measures sustained_profile (CUDA only). An H200 settles at its power
    # cap within about 10 s (nvidia-smi dmon); 8 s runs measured 1.8-2.0 % less slowdown than 60 s
    # runs, whose quarters agreed within 0.3 %.
    sustained_seconds: float = 30.0
    # duty cycles below 1 at which sustained_profile also runs the chain, idling the GPU between
    # repeats as a pipeline bubble or exposed communication does ('sustained.duty')
    sustained_duty: Tuple[float, ...] = ()
    optimizer_params: int = 2 ** 27
    seed: int = 1234
    progress: bool = True
    # time the transformer layers through torch.compile, as pretrain_gpt.py --compile (or a plan
    # with "compile") runs them, and count what the compiled layers save for backward
    compile: bool = False
    # float8 recipes (plan.FP8_RECIPES) whose layers are measured too ('layer.fp8.<recipe>')
    fp8: Tuple[str, ...] = ()


def default_optimizer_params(device: torch.device) -> int:
    return 2 ** 27 if device.type == "cuda" else 2 ** 18


def default_dtype(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def check_settings(cfg: GPTConfig, s: ModelSettings) -> None:
    for name, values in (("--micro-batch-sizes", s.micro_batch_sizes), ("--seq-lengths", s.seq_lengths),
                         ("--tp", s.tp_degrees)):
        if not values or min(values) < 1:
            raise UserError(f"{name} needs positive integers, got {values}")
    if len(set(s.micro_batch_sizes)) * len(set(s.seq_lengths)) < 2:
        raise UserError("give at least two --micro-batch-sizes (or --seq-lengths): the per-token fits need "
                        "two token counts")
    if len(set(s.seq_lengths)) == 2 and len(set(s.micro_batch_sizes)) < 2:
        raise UserError("--seq-lengths with two lengths needs two or more --micro-batch-sizes (or give three "
                        "lengths): the fits in sequence length have three terms")
    if s.soak_seconds < 0 or s.sustained_seconds < 0:
        raise UserError("--soak-seconds and --sustained-seconds must be >= 0")
    if any(not 0 < u < 1 for u in s.sustained_duty):
        raise UserError(f"--sustained-duty takes duty cycles strictly between 0 and 1, got {list(s.sustained_duty)}")
    if s.warmup < 0 or s.iters < 1:
        raise UserError(f"--warmup={s.warmup} must be >= 0 and --iters={s.iters} >= 1")
    if s.optimizer_params < 64:
        raise UserError(f"--optimizer-params={s.optimizer_params} must be at least 64")
