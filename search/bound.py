"""The compute bound: how fast one GPU could train the model if it did nothing but the model's math.

Per token, at tp 1: every transformer layer's forward + backward, the embedding and the LM head
with its loss, each at the slope of its profiled time fit (the per-token cost a large
micro-batch approaches) and at the profile's sustained clock. No communication, optimizer,
pipeline bubble, recomputation or per-call overhead is counted, so no plan on that card, with
those kernels, can train faster; a measured run's tokens/s over this bound says how much of the
step is anything but the model's math. Of the bf16 table (bf16 weights, no autocast: how the
runtime computes every unit) and the autocast one, the faster counts, so that the bound also holds
for runs priced as units under autocast (`bf16_unit` False); with `fp8`, the float8 layer's table
too, since a plan searched with it may put every layer in float8.
"""
from typing import NamedTuple, Optional

from megatron_galvatron.profile_format import ModelProfile


class ComputeBound(NamedTuple):
    tokens_per_s: float  # per GPU
    layer_s_per_token: float  # one layer, forward + backward
    vocab_s_per_token: float  # LM head + loss, forward + backward, and the embedding's
    flops_per_token: float

    def mfu(self, peak_flops: Optional[float]) -> Optional[float]:
        return self.tokens_per_s * self.flops_per_token / peak_flops if peak_flops else None

    def as_dict(self, peak_flops: Optional[float] = None) -> dict:
        return {"tokens_per_s_per_gpu": self.tokens_per_s, "layer_s_per_token": self.layer_s_per_token,
                "vocab_s_per_token": self.vocab_s_per_token, "flops_per_token": self.flops_per_token,
                "mfu": self.mfu(peak_flops)}


def _slope(fits) -> float:
    fwd, bwd = fits
    return fwd.per_token_s + bwd.per_token_s


def compute_bound(profile: ModelProfile, num_layers: int, flops_per_token: float,
                  fp8: Optional[str] = None) -> ComputeBound:
    fp8_fits = profile.fp8_tables(fp8, 1, False).fits if fp8 else None
    layer = min(_slope(f) for f in (profile.layer_fits(1, False), profile.bf16_layer_fits(1, False), fp8_fits) if f)
    head = min(_slope(f) for f in (profile.vocab_fits(1), profile.bf16_vocab_fits(1)) if f)
    emb = profile.embedding_fits(1)
    vocab = head + (_slope(emb) if emb else 0.0)
    per_token = num_layers * layer + vocab
    if per_token <= 0:  # a fit whose slope is not positive (noise on a tiny model) bounds nothing
        return ComputeBound(float("inf"), layer, vocab, flops_per_token)
    return ComputeBound(1.0 / per_token, layer, vocab, flops_per_token)
