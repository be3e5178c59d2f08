"""One training step's forward and backward over all micro-batches of a stage.

Micro-batches may differ in size (plan.micro_batch_sizes); each returns its loss already
divided by the step's global token count, so their sum is the full batch's mean whatever the
sizes, and nothing here rescales.

pp_deg == 1: plain gradient accumulation (no pipeline machinery). Otherwise GPipe (all
forwards, then all backwards) or 1F1B (pipedream-flush: warm-up forwards, then one forward
one backward, then cool-down backwards), which keeps at most pp - stage_index micro-batches
of activations alive on a stage. An output already sent downstream keeps only its autograd
node: its storage is released, as Megatron does.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from megatron_galvatron.pipeline.p2p import P2P


@dataclass
class StepStats:
    loss_sum: torch.Tensor  # sum over micro-batches of this rank's scaled loss (last stage), detached
    max_live_microbatches: int = 0
    # Filled in by the training step after the schedule:
    grad_norm: Optional[torch.Tensor] = None  # global, before clipping
    lr: float = 0.0
    skipped: Optional[torch.Tensor] = None  # 0-dim bool: no optimizer step (NaN/Inf gradient norm)


def _release(y: Optional[torch.Tensor]) -> None:
    """Keep the autograd node of a sent output but drop its activation memory."""
    if y is not None and y.grad_fn is not None and y._base is None:
        y.data = torch.empty((1,), device=y.device, dtype=y.dtype)


def _backward(y: torch.Tensor, grad: Optional[torch.Tensor]) -> None:
    # The engine call skips the shape check that a released output would fail.
    torch.autograd.Variable._execution_engine.run_backward(
        tensors=(y,), grad_tensors=(grad,), keep_graph=False, create_graph=False, inputs=(),
        allow_unreachable=True, accumulate_grad=True)


class Schedule:
    """forward_fn(microbatch_index, input_or_None) -> stage output; on the last stage it must
    return the scalar loss to differentiate. start_microbatch(is_last) is called before each
    backward so data parallelism knows when to synchronise."""

    def __init__(self, kind: str, pp_deg: int, stage: int, chunks: int, p2p: Optional[P2P],
                 forward_fn: Callable, start_microbatch: Callable[[bool], None]):
        self.kind, self.pp, self.stage, self.chunks, self.p2p = kind, pp_deg, stage, chunks, p2p
        self.forward_fn, self.start_microbatch = forward_fn, start_microbatch
        self.is_last = stage == pp_deg - 1

    def _fwd(self, i: int, x):
        return self.forward_fn(i, x)

    def _bwd(self, x, y, grad_y, i: int):
        self.start_microbatch(i == self.chunks - 1)
        if self.is_last:
            y.backward()
        else:
            _backward(y, grad_y)
        return x.grad if x is not None else None

    def run(self, device) -> StepStats:
        loss = torch.zeros((), device=device)
        if self.pp == 1:
            for i in range(self.chunks):
                y = self._fwd(i, None)
                loss += y.detach()
                self._bwd(None, y, None, i)
            return StepStats(loss, 1)
        return self._gpipe(loss) if self.kind == "gpipe" else self._one_f_one_b(loss)

    def _gpipe(self, loss) -> StepStats:
        inputs, outputs = [], []
        for i in range(self.chunks):
            x = self.p2p.recv_forward(i)
            y = self._fwd(i, x)
            if self.is_last:
                loss += y.detach()
            else:
                self.p2p.send_forward(y)
                _release(y)
            inputs.append(x)
            outputs.append(y)
        live = len(outputs)
        for i in range(self.chunks):
            g = None if self.is_last else self.p2p.recv_backward(i)
            self.p2p.send_backward(self._bwd(inputs[i], outputs[i], g, i))
            inputs[i] = outputs[i] = None
        return StepStats(loss, live)

    def _one_f_one_b(self, loss) -> StepStats:
        warmup = min(self.pp - self.stage - 1, self.chunks)
        steady = self.chunks - warmup
        inputs: List = []
        outputs: List = []
        live = 0
        fwd_i = bwd_i = 0

        def forward(x):
            nonlocal fwd_i, live, loss
            y = self._fwd(fwd_i, x)
            fwd_i += 1
            if self.is_last:
                loss += y.detach()
            inputs.append(x)
            outputs.append(y)
            live = max(live, len(outputs))
            return y

        for _ in range(warmup):
            y = forward(self.p2p.recv_forward(fwd_i))
            self.p2p.send_forward(y)
            _release(y)
        x = self.p2p.recv_forward(fwd_i) if steady > 0 else None
        for k in range(steady):
            y = forward(x)
            g = None if self.is_last else self.p2p.send_forward_recv_backward(y, bwd_i)
            if not self.is_last:
                _release(y)
            gx = self._bwd(inputs.pop(0), outputs.pop(0), g, bwd_i)
            bwd_i += 1
            if k == steady - 1:
                self.p2p.send_backward(gx)
            else:
                x = self.p2p.send_backward_recv_forward(gx, fwd_i)
        for _ in range(warmup):
            g = None if self.is_last else self.p2p.recv_backward(bwd_i)
            gx = self._bwd(inputs.pop(0), outputs.pop(0), g, bwd_i)
            bwd_i += 1
            self.p2p.send_backward(gx)
        return StepStats(loss, live)


def forward_only(is_last_stage: bool, chunks: int, p2p: Optional[P2P], forward_fn: Callable,
                 device) -> torch.Tensor:
    """Evaluation: every micro-batch forward through the pipeline, without autograd. Nothing
    waits for a backward, so each stage just receives, computes and sends one micro-batch at a
    time. Returns the summed loss on the last stage (zero elsewhere)."""
    loss = torch.zeros((), device=device)
    with torch.no_grad():
        for i in range(chunks):
            x = p2p.recv_forward(i) if p2p is not None else None
            y = forward_fn(i, x)
            if is_last_stage:
                loss += y.detach().float()
            else:
                p2p.send_forward(y)
    return loss
