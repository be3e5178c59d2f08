"""RNG streams for dropout under tensor parallelism.

Dropout on activations that are replicated across a TP group must draw the same mask on
every TP rank (the default stream, seeded identically on those ranks); dropout on TP-split
activations (attention probabilities of local heads) or on sequence-sharded activations must
draw different masks (a stream seeded per TP rank). Each layer owns one tracker built from its
own TP rank and its own stream number (the layer index), so no two layers repeat each other's
masks and layers with different TP groups stay independent.
"""
import contextlib

import torch

TP_SEED_OFFSET = 2718
STREAM_STRIDE = 65_537  # above any TP degree, so no (stream, tp_rank) pair shares a seed with another


def tracker_seed(seed: int, tp_rank: int, stream: int = 0) -> int:
    return (seed + TP_SEED_OFFSET + stream * STREAM_STRIDE + tp_rank) % 2 ** 63


class RNGTracker:
    def __init__(self, seed: int, tp_rank: int, device: torch.device, stream: int = 0):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(tracker_seed(seed, tp_rank, stream))

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
