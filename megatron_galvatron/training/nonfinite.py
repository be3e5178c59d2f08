"""Steps whose gradients are NaN or Inf are skipped, the same step on every rank.

The signal is the global gradient norm (data_parallel/grad_sync.py): every rank's square sum
goes into one all-reduce over the whole world, so a NaN or Inf in any gradient of any stage
makes the norm non-finite on every rank alike, with no collective of its own. A non-finite loss
reaches the gradients too (a non-finite logit makes its softmax, and so its gradient, NaN).

A skipped step changes nothing: not the weights, not AdamW's moments or step count. It still
counts as an iteration and consumes its batch, and the LR schedule moves on, as in Megatron.
"""
from typing import Optional

import torch

from megatron_galvatron.errors import UserError


def step_if_finite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """optimizer.step() when `finite` (a 0-dim bool tensor, the same on every rank), else nothing."""
    if all(g.get("fused") for g in optimizer.param_groups):
        # The fused kernels take the skip as a device tensor (GradScaler's found_inf), so the
        # host never waits for the backward to learn the answer.
        optimizer.found_inf = (~finite).float()
        optimizer.step()
    elif bool(finite):  # foreach has no such input; build_optimizer picks it on CPU only: no wait
        optimizer.step()


class SkippedSteps:
    """Counts skipped steps on the device, read once per logging interval (where the loop already
    waits for the loss), and stops the run after more than `limit` in a row (None: never)."""

    def __init__(self, device: torch.device, limit: Optional[int]):
        self.limit = limit
        self.in_interval = torch.zeros((), device=device)
        self.run = torch.zeros((), device=device)  # consecutive skipped steps up to now
        self.longest = torch.zeros((), device=device)  # longest such run within the interval

    def add(self, skipped: torch.Tensor) -> None:
        s = skipped.float()
        self.in_interval += s
        self.run.add_(1).mul_(s)
        torch.maximum(self.longest, self.run, out=self.longest)

    def read(self, iteration: int) -> int:
        """Skipped steps of the interval ending at `iteration`; resets the interval."""
        n, longest = (int(v) for v in torch.stack([self.in_interval, self.longest]).tolist())
        self.in_interval.zero_()
        self.longest.zero_()  # a run still going on is picked up again by the next add
        if self.limit is not None and longest > self.limit:
            what = "a step" if longest == 1 else f"{longest} steps in a row"
            raise UserError(f"{what} up to iteration {iteration} had a NaN/Inf gradient norm (skipped), "
                            f"more than --max-skipped-steps {self.limit}: lower --lr, check the data, or allow "
                            f"more with --max-skipped-steps")
        return n
