"""Replicated data parallelism for one module on its own DP group.

Gradients live in one flat fp32 buffer per module, so each parameter's .grad is a view into
it and autograd accumulates in place across micro-batches. When the last parameter of the
module has its gradient ready in the final micro-batch's backward, the whole buffer is
all-reduced asynchronously (a bucket per module, overlapped with the backward of the modules
before it); finish() waits for it before the optimizer step. The loss is already divided by
the global token count, so the reduction is a sum.
"""
import functools
import weakref
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn


def _hook(ref, p: torch.Tensor) -> None:
    bucket = ref()
    if bucket is not None:
        bucket._on_grad(p)


class GradBucket:
    def __init__(self, module: nn.Module, group: Optional[dist.ProcessGroup]):
        self.group = group
        self.params: List[nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        self.world = 1 if group is None else dist.get_world_size(group)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.buffer = torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32, device=device)
        offset = 0
        for p in self.params:
            p.grad = self.buffer[offset:offset + p.numel()].view_as(p)
            p.main_grad_view = p.grad
            offset += p.numel()
        self.sync_enabled = True
        self._ready = 0
        self._handle = None
        if self.world > 1:
            # The hook holds the bucket weakly: parameters own their hooks, so a strong
            # reference would form a cycle through C++ that the garbage collector cannot free.
            ref = weakref.ref(self)
            for p in self.params:
                p.register_post_accumulate_grad_hook(functools.partial(_hook, ref))

    def _on_grad(self, p: torch.Tensor) -> None:
        if p.grad is not p.main_grad_view:
            # Autograd replaced .grad (e.g. dtype mismatch); fold it back into the buffer view.
            p.main_grad_view.copy_(p.grad)
            p.grad = p.main_grad_view
        if not self.sync_enabled:
            return
        self._ready += 1
        if self._ready == len(self.params):
            self._handle = dist.all_reduce(self.buffer, group=self.group, async_op=True)

    def finish(self) -> None:
        if self._handle is not None:
            self._handle.wait()
        elif self.world > 1 and self.sync_enabled and self._ready:
            raise RuntimeError("DDP bucket saw gradients for only some of its parameters")
        self._handle, self._ready = None, 0

    def zero_grad(self) -> None:
        self.buffer.zero_()
        for p in self.params:
            p.grad = p.main_grad_view
