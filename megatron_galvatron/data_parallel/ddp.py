"""Replicated data parallelism for one module on its own DP group.

Gradients live in one flat fp32 buffer per module, each parameter's main gradient a view into
it. When the last parameter of the module has its gradient ready in the final micro-batch's
backward, the whole buffer is all-reduced asynchronously (a bucket per module, overlapped with
the backward of the modules before it); finish() waits for it before the optimizer step. The
loss is already divided by the global token count, so the reduction is a sum.

With bf16 compute the parameters hold fp32 master weights between steps; inside compute()
they hold a bf16 copy (made once per step), autograd produces bf16 gradients and the hook adds
each into the fp32 buffer, so accumulation and reduction stay fp32 and no weight is cast per
micro-batch.
"""
import functools
import weakref
from contextlib import contextmanager
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn


def _hook(ref, i: int, p: torch.Tensor) -> None:
    bucket = ref()
    if bucket is not None:
        bucket._on_grad(i, p)


class GradBucket:
    def __init__(self, module: nn.Module, group: Optional[dist.ProcessGroup], bf16: bool = False):
        self.group, self.bf16 = group, bf16
        self.params: List[nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        self.world = 1 if group is None else dist.get_world_size(group)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.buffer = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32, device=device)
        # Per parameter (same order as self.params): its fp32 main gradient, a view into the
        # buffer, and under bf16 the buffer its compute copy lives in.
        self.main_grads: List[torch.Tensor] = []
        self.compute_copies: List[torch.Tensor] = []
        offset = 0
        for p in self.params:
            self.main_grads.append(self.buffer[offset:offset + p.numel()].view_as(p))
            p.grad = self.main_grads[-1]
            if bf16:
                self.compute_copies.append(torch.empty_like(p.data, dtype=torch.bfloat16))
            offset += p.numel()
        self.sync_enabled = True
        self._ready = 0
        self._handle = None
        self._masters = None
        if self.world > 1 or bf16:
            # The hook holds the bucket weakly: parameters own their hooks, so a strong
            # reference would form a cycle through C++ that the garbage collector cannot free.
            ref = weakref.ref(self)
            for i, p in enumerate(self.params):
                p.register_post_accumulate_grad_hook(functools.partial(_hook, ref, i))

    def _on_grad(self, i: int, p: torch.Tensor) -> None:
        main = self.main_grads[i]
        if p.grad is not main:
            # A bf16 micro-batch gradient (or one autograd did not accumulate in place): fold it
            # into the fp32 main gradient.
            if p.grad.dtype == torch.float32:
                main.copy_(p.grad)
                p.grad = main
            else:
                main.add_(p.grad)
                p.grad = None
        if not self.sync_enabled or self.world == 1:
            return
        self._ready += 1
        if self._ready == len(self.params):
            self._handle = dist.all_reduce(self.buffer, group=self.group, async_op=True)

    @contextmanager
    def compute(self):
        """Forward and backward run on bf16 copies of the fp32 master weights."""
        if not self.bf16:
            yield
            return
        masters = [p.data for p in self.params]
        for p, m, c in zip(self.params, masters, self.compute_copies):
            c.copy_(m)
            p.data = c
            p.grad = None
        try:
            yield
        finally:
            for p, m, g in zip(self.params, masters, self.main_grads):
                p.data = m
                p.grad = g

    def finish(self) -> None:
        if self._handle is not None:
            self._handle.wait()
        elif self.world > 1 and self.sync_enabled and self._ready:
            raise RuntimeError("DDP bucket saw gradients for only some of its parameters")
        self._handle, self._ready = None, 0

    def zero_grad(self) -> None:
        self.buffer.zero_()
        for p, g in zip(self.params, self.main_grads):
            p.grad = g
