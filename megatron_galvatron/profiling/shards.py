"""One device standing in for TP rank 0 of a group of size tp.

The real layers size their weight shards from their TP group's size, so a process group that
reports size tp but moves no data (PyTorch's "fake" backend: every collective returns at once,
outputs keep their shapes) gives exactly the shapes and kernels one rank of a TP group runs,
sequence parallelism included. Only the local compute is timed that way; the communication
is priced from hardware.json by the cost model.
"""
from typing import Dict, Optional

import torch.distributed as dist

from megatron_galvatron.errors import UserError
from megatron_galvatron.parallel_state import LayerGroups, Layout


class ShardGroups:
    def __init__(self, max_tp: int):
        self.groups: Dict[int, Optional[dist.ProcessGroup]] = {1: None}
        self.owns_world = False
        if max_tp <= 1:
            return
        if dist.is_initialized():
            raise UserError("profile_model.py runs in a single process: launch it with python, not torchrun")
        try:
            import torch.testing._internal.distributed.fake_pg  # noqa: F401  (registers the backend)
            backend = dist.Backend.FAKE
        except (ImportError, AttributeError):
            raise UserError("this PyTorch has no 'fake' process group backend, needed to "
                            "measure tp > 1 on one device: pass --tp 1 or upgrade PyTorch") from None
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=max_tp)
        self.owns_world = True
        self.groups[max_tp] = dist.group.WORLD

    def ensure(self, tp: int) -> None:
        if tp not in self.groups:
            self.groups[tp] = dist.new_group(list(range(tp)))

    def layer_groups(self, tp: int, sp: bool) -> LayerGroups:
        self.ensure(tp)
        ranks = tuple(range(tp))
        return LayerGroups(layout=Layout(tp=tp, tp_consec=True, sp=sp and tp > 1), tp_group=self.groups[tp],
                           tp_ranks=ranks, tp_rank=0, dp_group=None, dp_ranks=(0,), dp_rank=0,
                           stage_group=self.groups[tp], stage_ranks=ranks)

    def close(self) -> None:
        if self.owns_world and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_world = False
