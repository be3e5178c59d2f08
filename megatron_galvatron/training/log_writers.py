"""Where the iteration records go besides stdout: TensorBoard, Weights & Biases, a JSON-lines
file; and the stdout line itself, in Megatron-LM's layout so that its log parsers read ours."""
import json
import os
import sys
from datetime import datetime
from typing import Callable, List, Optional

from megatron_galvatron.training.config import LoggingConfig


def iteration_line(rec: dict, total: int, now: Optional[datetime] = None) -> str:
    """Megatron-LM's `key: value |` fields in its order and number formats (`lm loss:`,
    `consumed samples:`, `elapsed time per iteration (ms):` ...), then this trainer's own."""
    now = now or datetime.now()
    parts = [f" [{now:%Y-%m-%d %H:%M:%S}] iteration {rec['iteration']:8d}/{total:8d}",
             f" consumed samples: {rec['consumed_samples']:12d}",
             f" elapsed time per iteration (ms): {rec['iter_time_s'] * 1000:.1f}",
             f" throughput per GPU (TFLOP/s/GPU): {rec['tflops_per_gpu']:.1f}",
             f" learning rate: {rec['lr']:.6E}",
             f" global batch size: {rec['global_batch_size']:5d}",
             f" lm loss: {rec['loss']:.6E}",
             " loss scale: 1.0",  # bf16 and float32 need no loss scaling
             f" grad norm: {rec['grad_norm']:.3f}",
             f" number of skipped iterations: {rec['skipped']:3d}",
             f" number of nan iterations: {rec['nan_iterations']:3d}",
             f" tokens per second per GPU: {rec['tokens_per_s_per_gpu']:.1f}"]
    if "mfu" in rec:
        parts.append(f" MFU: {rec['mfu']:.3f}")
    parts.append(f" peak memory (GB): {rec['peak_mem_gb']:.2f}")
    return " |".join(parts) + " |"


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _tensorboard(tb_dir: str) -> Callable[[dict], None]:
    os.makedirs(tb_dir, exist_ok=True)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        path = os.path.join(tb_dir, "scalars.jsonl")
        _warn(f"--tensorboard-dir {tb_dir}: tensorboard is not installed (pip install tensorboard); "
              f"the scalars go to {path} instead")
        return _jsonl(path)
    w = SummaryWriter(tb_dir)

    def write(rec):
        for k, v in rec.items():
            if k != "iteration":
                w.add_scalar(k, v, rec["iteration"])
        w.flush()
    return write


def _jsonl(path: str) -> Callable[[dict], None]:
    def write(rec):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return write


def _wandb(log: LoggingConfig, run_config: dict):
    """A W&B run (WANDB_MODE=offline keeps it on disk), or None after one line when wandb is missing."""
    try:
        import wandb
    except ImportError:
        _warn(f"--wandb-project {log.wandb_project}: wandb is not installed (pip install wandb); "
              f"not logging to Weights & Biases")
        return None
    save_dir = log.wandb_save_dir
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
    return wandb.init(project=log.wandb_project, name=log.wandb_exp_name, dir=save_dir, config=run_config)


class Writers:
    """Every sink the flags ask for, written on the logging rank only."""

    def __init__(self, log: LoggingConfig, run_config: dict):
        self._sinks: List[Callable[[dict], None]] = []
        self._metrics_json = _jsonl(log.metrics_json) if log.metrics_json else None  # training records only
        self._wandb_run = None
        if log.tensorboard_dir:
            self._sinks.append(_tensorboard(log.tensorboard_dir))
        if log.wandb_project:
            self._wandb_run = _wandb(log, run_config)
            if self._wandb_run is not None:
                run = self._wandb_run
                self._sinks.append(lambda rec: run.log({k: v for k, v in rec.items() if k != "iteration"},
                                                       step=rec["iteration"]))

    def __call__(self, rec: dict, training: bool = True) -> None:
        for sink in self._sinks:
            sink(rec)
        if training and self._metrics_json is not None:
            self._metrics_json(rec)

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
