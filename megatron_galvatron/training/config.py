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
    wandb_project: Optional[str] = None  # None: no Weights & Biases run
    wandb_exp_name: Optional[str] = None
    wandb_save_dir: Optional[str] = None


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
    order: str = "epochs"  # or "megatron": megatron-core GPTDataset's sample order


@dataclass(frozen=True)
class ResilienceConfig:
    """Stopping early with a checkpoint, surviving bad steps, and saving without stalling."""
    exit_signal_handler: bool = False  # SIGTERM/SIGINT: finish the step, save, exit 0
    exit_interval: Optional[int] = None  # save and exit when iteration % N == 0
    exit_duration_mins: Optional[float] = None  # save and exit once the run has lasted this long
    distributed_timeout_mins: float = 10.0  # how long a collective waits for a silent peer
    max_skipped_steps: Optional[int] = 0  # consecutive non-finite steps tolerated; None: no limit
    async_save: bool = False  # write checkpoint files in a background thread

    @property
    def exits_early(self) -> bool:
        return self.exit_signal_handler or self.exit_interval is not None or self.exit_duration_mins is not None


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
    resilience: ResilienceConfig = ResilienceConfig()
