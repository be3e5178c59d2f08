"""The typed interface of save and load: what a checkpoint takes from a run and gives back."""
from dataclasses import dataclass, field
from typing import Any, Dict

import torch

from megatron_galvatron.model.stage import StageModel
from megatron_galvatron.parallel_state import ParallelState
from megatron_galvatron.plan import Plan
from megatron_galvatron.training.config import OptimizerConfig
from megatron_galvatron.training.optimizer import LRSchedule


@dataclass
class Progress:
    iteration: int
    consumed_samples: int


@dataclass
class TrainingState:
    """This rank's part of a run. A load writes into stage, optimizer and the RNG streams in
    place and hands the checkpoint's progress back (see Loaded)."""
    stage: StageModel
    plan: Plan
    optimizer: torch.optim.Optimizer
    lr_schedule: LRSchedule
    progress: Progress
    optimizer_config: OptimizerConfig  # recorded in meta.json; a resumed run takes its own flags
    seed: int  # re-seeds the RNG streams when the checkpoint was written under another plan
    carried: Dict[str, Any] = field(default_factory=dict)  # format.CARRIED fields every save writes again

    @property
    def ps(self) -> ParallelState:
        return self.stage.ps


@dataclass
class Loaded:
    directory: str
    progress: Progress  # the checkpoint's, or the run's own when only the weights were taken
    carried: Dict[str, Any] = field(default_factory=dict)  # its format.CARRIED fields
