"""RNG streams for dropout under tensor parallelism.

Dropout on activations that are replicated across a TP group must draw the same mask on
every TP rank (the default stream, seeded identically on those ranks); dropout on TP-split
activations (attention probabilities of local heads) or on sequence-sharded activations must
draw different masks (a stream seeded per TP rank). Each layer owns one tracker built from its
own TP rank, so layers with different TP groups stay independent.
"""
import contextlib

import torch

TP_SEED_OFFSET = 2718


class RNGTracker:
    def __init__(self, seed: int, tp_rank: int, device: torch.device):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed + TP_SEED_OFFSET + tp_rank)

    @contextlib.contextmanager
    def fork(self):
        """Run the block on this tracker's per-TP-rank stream; the default stream is untouched."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(self.generator.get_state(), self.device)
            else:
                torch.set_rng_state(self.generator.get_state())
            try:
                yield
            finally:
                state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()
                self.generator.set_state(state)
