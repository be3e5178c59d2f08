"""Activation checkpointing of one module whose forward draws from its own RNG stream.

torch.utils.checkpoint restores the default generators' state for the recomputation, not a
module's own (TP-aware dropout streams), so the first pass's state is kept and replayed.
The module's structure and parameter names stay as they are (no wrapper module), so
checkpoints, FSDP and compile see the same names with or without it.
"""
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _replay(forward, generator: torch.Generator, x: torch.Tensor, first_state: torch.Tensor, done: list):
    if not done:  # the first pass draws from the live stream
        done.append(True)
        return forward(x)
    # Recomputation replays the first pass's masks. Other micro-batches may have drawn since
    # (pipeline warm-up), so the live stream is put back afterwards, not left at the replay's end.
    live = generator.get_state()
    generator.set_state(first_state)
    try:
        return forward(x)
    finally:
        generator.set_state(live)


def checkpoint_module(module: nn.Module, generator: torch.Generator) -> None:
    """From now on ``module`` keeps only its input in training and recomputes the rest in backward."""
    inner = module.forward
    replay = partial(_replay, inner, generator)

    def checkpointed(x: torch.Tensor) -> torch.Tensor:
        if module.training and torch.is_grad_enabled():
            return checkpoint(replay, x, generator.get_state(), [], use_reentrant=False)
        return inner(x)

    module.forward = checkpointed


@contextmanager
def checkpointed(module: nn.Module, generator: torch.Generator):
    """``module`` checkpointed inside the block only (a profiler times a layer both ways)."""
    own = module.__dict__.get("forward")
    checkpoint_module(module, generator)
    try:
        yield module
    finally:
        if own is None:
            del module.forward  # the class's forward again
        else:
            module.forward = own
