"""The settings of a training run besides the model and the plan, typed; arguments.training_config
builds them once from the command line."""
from dataclasses import dataclass
from typing import List, Optional, Tuple


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and gradient clipping."""
    weight_decay: float
    betas: Tuple[float, float]
    eps: float
    clip_grad: float


@dataclass(frozen=True)
class LRConfig:
    """Warm-up, then decay from lr to min_lr over decay_iters (see optimizer.LRSchedule)."""
    lr: float
    min_lr: float
    warmup_iters: int
    decay_iters: int
    decay_style: str


@dataclass(frozen=True)
class EvalConfig:
    interval: int  # 0: no evaluation during training
    iters: int  # global batches per evaluation
    skip_train: bool  # evaluate once and stop


@dataclass(frozen=True)
class LoggingConfig:
    interval: int
    tensorboard_dir: Optional[str]
    metrics_json: Optional[str]
    exit_on_nonfinite: bool


@dataclass(frozen=True)
class CheckpointConfig:
    save: Optional[str]
    load: Optional[str]
    save_interval: int  # 0: save only at the end
    finetune: bool  # weights only: iteration 0, fresh optimizer, the run's own RNG streams
    load_optim: bool
    load_rng: bool


@dataclass(frozen=True)
class DataConfig:
    path: Optional[List[str]]  # None: mock data
    split: str


@dataclass(frozen=True)
class TrainingConfig:
    train_iters: int  # a total: a resumed run stops there too
    seed: int
    bf16: bool
    optimizer: OptimizerConfig
    lr: LRConfig
    eval: EvalConfig
    logging: LoggingConfig
    checkpoint: CheckpointConfig
    data: DataConfig
