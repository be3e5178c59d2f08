"""What keeps the ranks of a save or load in step when one of them fails."""
from typing import Callable

import torch.distributed as dist

from megatron_galvatron.checkpoint.format import CheckpointError
from megatron_galvatron.errors import UserError


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def agree(fn: Callable, *args):
    """Run fn on every rank; if it raised a UserError on any rank, raise it on all of them, so
    that no rank is left waiting in a collective while another one exits."""
    out, err = None, None
    try:
        out = fn(*args)
    except UserError as e:
        err = str(e)
    if world() > 1:
        errs = [None] * world()
        dist.all_gather_object(errs, err)
        err = next((e for e in errs if e), None)
    if err:
        raise CheckpointError(err)
    return out


def broadcast(obj, src: int = 0):
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
