"""Point-to-point between neighbouring pipeline stages.

Rank i of stage s talks to rank i of stage s+1. Shapes come from the plan (the sending
stage's output layout, one shape per micro-batch since micro-batches may differ in size), so
no shape handshake is needed for a fixed sequence length; a receive names its micro-batch. Every
exchange is one batch_isend_irecv so that a send and a receive in opposite directions never
deadlock.
"""
from typing import Optional, Sequence

import torch
import torch.distributed as dist


class P2P:
    def __init__(self, prev_rank: Optional[int], next_rank: Optional[int],
                 recv_shapes: Sequence[Sequence[int]], send_shapes: Sequence[Sequence[int]],
                 dtype: torch.dtype, device: torch.device):
        """recv_shapes[i] / send_shapes[i]: activation shape of micro-batch i received from the
        previous stage / sent to the next one (its gradient has the same shape)."""
        self.prev_rank, self.next_rank = prev_rank, next_rank
        self.recv_shapes = [tuple(x) for x in recv_shapes]
        self.send_shapes = [tuple(x) for x in send_shapes]
        self.dtype, self.device = dtype, device

    def _exchange(self, send_next=None, send_prev=None, recv_prev=None, recv_next=None):
        """recv_prev / recv_next: the micro-batch index to receive from that side, or None."""
        ops, out_prev, out_next = [], None, None
        if send_prev is not None:
            ops.append(dist.P2POp(dist.isend, send_prev.contiguous(), self.prev_rank))
        if send_next is not None:
            ops.append(dist.P2POp(dist.isend, send_next.to(self.dtype).contiguous(), self.next_rank))
        if recv_prev is not None:
            out_prev = torch.empty(self.recv_shapes[recv_prev], dtype=self.dtype, device=self.device,
                                   requires_grad=True)
            ops.append(dist.P2POp(dist.irecv, out_prev, self.prev_rank))
        if recv_next is not None:
            out_next = torch.empty(self.send_shapes[recv_next], dtype=self.dtype, device=self.device)
            ops.append(dist.P2POp(dist.irecv, out_next, self.next_rank))
        if ops:
            for req in dist.batch_isend_irecv(ops):
                req.wait()
        return out_prev, out_next

    def recv_forward(self, i: int):
        return None if self.prev_rank is None else self._exchange(recv_prev=i)[0]

    def send_forward(self, y):
        if self.next_rank is not None:
            self._exchange(send_next=y)

    def recv_backward(self, i: int):
        return None if self.next_rank is None else self._exchange(recv_next=i)[1]

    def send_backward(self, g):
        if self.prev_rank is not None and g is not None:
            self._exchange(send_prev=g)

    def send_forward_recv_backward(self, y, i: int):
        """Send an output; receive the gradient of micro-batch i."""
        if self.next_rank is None:
            return None
        return self._exchange(send_next=y, recv_next=i)[1]

    def send_backward_recv_forward(self, g, i: int):
        """Send a gradient; receive the input of micro-batch i."""
        if self.prev_rank is None:
            return None
        return self._exchange(send_prev=g, recv_prev=i)[0]
