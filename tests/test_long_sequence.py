"""--seq-length far beyond the other tests' (CPU, gloo, float32): a tiny LLaMA trains a step and
its loss is the independent reference model's.

The weights start at std 0.5 rather than 0.02 so that attention is sharp and the logits large:
at the usual init the loss sits at ln(vocab) whatever attention does, and would prove nothing.
The reference scores attention a block of queries at a time (no seq x seq matrix). How long
longer sequences take on CPU (up to 131072) is in docs/log.md (2026-12-03, long sequences)."""
import numpy as np
import pytest
import torch

from megatron_galvatron.data.mock_dataset import MockGPTDataset
from tests.dist_utils import run_distributed
from tests.equivalence import CLIP, LR, SEED, tiny_cfg
from tests.long_sequence_worker import train_one_step
from tests.reference_model import reference_loss

INIT = ["--init-method-std", "0.5"]


def _cfg(seq):
    return tiny_cfg("llama", num_layers=1, hidden_size=32, num_attention_heads=2, num_query_groups=2,
                    ffn_hidden_size=64, seq_length=seq)


def _reference(cfg, params0, **over):
    row = torch.from_numpy(MockGPTDataset(cfg["seq_length"], cfg["vocab_size"], SEED, 1)[0].astype(np.int64))[None]
    with torch.no_grad():
        return reference_loss({k: v.float() for k, v in params0.items()}, row[:, :-1], row[:, 1:],
                              dict(cfg, **over), query_block=2048).item()


@pytest.mark.parametrize("world,tp,sp,seq", [(1, 1, False, 32768), (2, 2, True, 8192)])
def test_long_sequence_loss_matches_the_reference(world, tp, sp, seq):
    cfg = _cfg(seq)
    res = run_distributed(world, train_one_step, cfg, LR, CLIP, tp, sp, INIT, timeout=600)[0]
    ref = _reference(cfg, res["params0"])
    assert abs(res["loss"] - ref) / ref < 1e-5, (res["loss"], ref)
    # the comparison can see positions: far-apart tokens rotated otherwise give another loss
    other = _reference(cfg, res["params0"], rope_theta=cfg["rope_theta"] * 10)
    assert abs(other - ref) / ref > 1e-3
