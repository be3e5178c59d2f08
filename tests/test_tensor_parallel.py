"""Tensor-parallel building blocks against independent single-process math.

Vocab-parallel cross entropy equals torch's cross entropy on the gathered (unpadded) logits,
in loss and in the logits gradient, at tp 1, 2 and 4; padding columns get no probability and no
gradient. The communication primitives are checked forward and backward on 2 ranks against
expectations written out by hand. ShardSpec's shard/unshard round trip is checked locally.
"""
import gc
import zlib

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_galvatron.tensor_parallel import mappings as M
from megatron_galvatron.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_galvatron.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear, pad_vocab
from megatron_galvatron.tensor_parallel.sharding import ShardSpec
from tests.dist_utils import run_distributed

SEQ, BATCH = 5, 3
# (true vocab, padded vocab): 61 -> 64 pads inside the last rank's slice; 37 -> 64 at tp 4
# leaves rank 3 with nothing but padding.
VOCABS = [(61, 64), (37, 64), (64, 64)]


def ce_inputs(true_vocab, padded, case):
    g = torch.Generator().manual_seed(1000 * true_vocab + case)
    logits = torch.randn(SEQ, BATCH, padded, generator=g) * 3
    # Large padding logits would dominate the softmax if they were not masked out.
    logits[..., true_vocab:] = 50.0
    target = torch.randint(0, true_vocab, (SEQ, BATCH), generator=g)
    target[0, 0], target[-1, -1] = 0, true_vocab - 1  # first and last real column, on the first / last rank
    upstream = torch.rand(SEQ, BATCH, generator=g) + 0.5
    return logits, target, upstream


def reference_ce(logits, target, upstream, true_vocab):
    full = logits.double().requires_grad_(True)
    loss = F.cross_entropy(full[..., :true_vocab].reshape(-1, true_vocab), target.reshape(-1), reduction="none")
    loss = loss.view(target.shape)
    (loss * upstream.double()).sum().backward()
    return loss.detach(), full.grad


def run_ce(logits, target, upstream, true_vocab, group, rank, tp, dtype):
    local = logits.chunk(tp, dim=-1)[rank].to(dtype).requires_grad_(True)
    loss = vocab_parallel_cross_entropy(local, target, group, true_vocab)
    (loss * upstream).sum().backward()
    return loss.detach(), local.grad


def check_ce(loss, grads, logits, target, upstream, true_vocab, dtype):
    """grads: every rank's slice of the logits gradient, in rank order."""
    if dtype == torch.bfloat16:  # the reference sees exactly the bf16 values the kernel saw
        logits = logits.to(torch.bfloat16).float()
    ref_loss, ref_grad = reference_ce(logits, target, upstream, true_vocab)
    grad = torch.cat([g.float() for g in grads], dim=-1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-5)
    if dtype == torch.bfloat16:
        assert grads[0].dtype == torch.bfloat16
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1.6e-2, atol=2e-3)
    else:
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
    assert torch.all(grad[..., true_vocab:] == 0), "padding columns received gradient"
    # Each token's gradient is softmax - onehot, which sums to zero over the real vocabulary.
    assert grad.double().sum(-1).abs().max() < (2e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("true_vocab,padded", VOCABS)
def test_cross_entropy_tp1(true_vocab, padded, dtype):
    logits, target, upstream = ce_inputs(true_vocab, padded, 0)
    loss, grad = run_ce(logits, target, upstream, true_vocab, None, 0, 1, dtype)
    check_ce(loss, [grad], logits, target, upstream, true_vocab, dtype)


def test_pad_vocab_sizes():
    assert pad_vocab(61, 4, 1) == 64 and pad_vocab(61, 4, 4) == 64 and pad_vocab(37, 16, 4) == 64
    assert pad_vocab(64, 8, 2) == 64 and pad_vocab(65, 8, 2) == 80


# ----------------------------------------------------------------------------- distributed worker

MAPPING_SHAPE = (4, 3, 6)  # [seq, batch, hidden]: dim 0 and the last dim both split over 2 ranks


def seeded(tag, rank, shape):
    g = torch.Generator().manual_seed(zlib.crc32(f"{tag}/{rank}".encode()))
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _mapping_results(group, r):
    out = {}
    for name in ("copy_to_tp", "reduce_from_tp", "scatter_to_tp", "gather_from_tp", "scatter_to_sp",
                 "gather_from_sp", "reduce_scatter_to_sp"):
        x = seeded(name, r, MAPPING_SHAPE).requires_grad_(True)
        y = getattr(M, name)(x, group)
        y.backward(seeded(name + ".grad", r, y.shape))
        out[name] = (y.detach(), x.grad)
    return out


def _parallel_mlp(group, r, sp):
    """Column -> GELU -> Row parallel MLP on this rank's shards of seeded full weights."""
    h, f = 6, 8
    w1, b1, w2, b2 = (seeded(n, 0, s).float() for n, s in [("w1", (f, h)), ("b1", (f,)), ("w2", (h, f)),
                                                           ("b2", (h,))])
    x = seeded("x", 0, MAPPING_SHAPE).float()
    col = ColumnParallelLinear(h, f, group, sequence_parallel=sp)
    row = RowParallelLinear(f, h, group, sequence_parallel=sp)
    with torch.no_grad():
        col.weight.copy_(w1.chunk(2, 0)[r]), col.bias.copy_(b1.chunk(2, 0)[r])
        row.weight.copy_(w2.chunk(2, 1)[r]), row.bias.copy_(b2)
    xin = (x.chunk(2, 0)[r] if sp else x).clone().requires_grad_(True)
    y = row(F.gelu(col(xin)))
    y.sum().backward()
    return {"y": y.detach(), "x_grad": xin.grad, "w1_grad": col.weight.grad, "w2_grad": row.weight.grad,
            "b2_grad": row.bias.grad}


def tp_worker(rank, world):
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    res = {"ce": {}}
    for tp, group in [(2, pairs[rank // 2]), (4, dist.group.WORLD)]:
        r = dist.get_rank(group)
        for true_vocab, padded in VOCABS:
            for dtype in (torch.float32, torch.bfloat16):
                # Both pairs see different inputs at tp 2, so each checks its own case.
                logits, target, upstream = ce_inputs(true_vocab, padded, rank // tp)
                res["ce"][(tp, true_vocab, dtype)] = run_ce(logits, target, upstream, true_vocab, group, r, tp,
                                                            dtype)
    if rank < 2:
        res["mappings"] = _mapping_results(pairs[0], rank)
        res["mlp"] = {sp: _parallel_mlp(pairs[0], rank, sp) for sp in (False, True)}
    dist.barrier()
    del pairs
    gc.collect()
    return res


@pytest.fixture(scope="module")
def tp_results():
    return run_distributed(4, tp_worker)


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("true_vocab,padded", VOCABS)
def test_cross_entropy_vocab_parallel(tp_results, tp, true_vocab, padded, dtype):
    for first in range(0, 4, tp):  # each TP group
        ranks = range(first, first + tp)
        outs = [tp_results[r]["ce"][(tp, true_vocab, dtype)] for r in ranks]
        for loss, _ in outs[1:]:  # every rank of the group returns the whole per-token loss
            assert torch.equal(loss, outs[0][0])
        logits, target, upstream = ce_inputs(true_vocab, padded, first // tp)
        check_ce(outs[0][0], [g for _, g in outs], logits, target, upstream, true_vocab, dtype)


def test_mappings_forward_backward(tp_results):
    def X(name, r):
        return seeded(name, r, MAPPING_SHAPE)

    def G(name, r, shape):
        return seeded(name + ".grad", r, shape)

    half_s, half_h = MAPPING_SHAPE[0] // 2, MAPPING_SHAPE[-1] // 2
    full_h = MAPPING_SHAPE[:-1] + (2 * MAPPING_SHAPE[-1],)
    full_s = (2 * MAPPING_SHAPE[0],) + MAPPING_SHAPE[1:]
    split_h = MAPPING_SHAPE[:-1] + (half_h,)
    split_s = (half_s,) + MAPPING_SHAPE[1:]
    for r in range(2):
        got = tp_results[r]["mappings"]
        expect = {
            # identity forward; backward sums the two ranks' gradients
            "copy_to_tp": (X("copy_to_tp", r), G("copy_to_tp", 0, MAPPING_SHAPE) + G("copy_to_tp", 1, MAPPING_SHAPE)),
            # sum forward; identity backward
            "reduce_from_tp": (X("reduce_from_tp", 0) + X("reduce_from_tp", 1), G("reduce_from_tp", r, MAPPING_SHAPE)),
            # own half of the hidden dim; backward concatenates both ranks' gradients
            "scatter_to_tp": (X("scatter_to_tp", r)[..., r * half_h:(r + 1) * half_h],
                              torch.cat([G("scatter_to_tp", q, split_h) for q in range(2)], dim=-1)),
            # concatenation of the hidden dims; backward keeps own half
            "gather_from_tp": (torch.cat([X("gather_from_tp", q) for q in range(2)], dim=-1),
                               G("gather_from_tp", r, full_h)[..., r * MAPPING_SHAPE[-1]:(r + 1) * MAPPING_SHAPE[-1]]),
            "scatter_to_sp": (X("scatter_to_sp", r)[r * half_s:(r + 1) * half_s],
                              torch.cat([G("scatter_to_sp", q, split_s) for q in range(2)], dim=0)),
            # sequence concatenation; backward sums the gradients and keeps own sequence part
            "gather_from_sp": (torch.cat([X("gather_from_sp", q) for q in range(2)], dim=0),
                               (G("gather_from_sp", 0, full_s) + G("gather_from_sp", 1, full_s))
                               [r * MAPPING_SHAPE[0]:(r + 1) * MAPPING_SHAPE[0]]),
            "reduce_scatter_to_sp": ((X("reduce_scatter_to_sp", 0) + X("reduce_scatter_to_sp", 1))
                                     [r * half_s:(r + 1) * half_s],
                                     torch.cat([G("reduce_scatter_to_sp", q, split_s) for q in range(2)], dim=0)),
        }
        for name, (y, gx) in expect.items():
            torch.testing.assert_close(got[name][0], y, rtol=0, atol=1e-12, msg=f"{name} forward, rank {r}")
            torch.testing.assert_close(got[name][1], gx, rtol=0, atol=1e-12, msg=f"{name} backward, rank {r}")


@pytest.mark.parametrize("sp", [False, True])
def test_column_row_parallel_mlp_matches_dense(tp_results, sp):
    w1, b1, w2, b2 = (seeded(n, 0, s).requires_grad_(True) for n, s in [("w1", (8, 6)), ("b1", (8,)),
                                                                        ("w2", (6, 8)), ("b2", (6,))])
    x = seeded("x", 0, MAPPING_SHAPE).requires_grad_(True)
    y = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    y.sum().backward()
    outs = [tp_results[r]["mlp"][sp] for r in range(2)]
    cat = (lambda k, d: torch.cat([o[k] for o in outs], dim=d).double())
    if sp:
        torch.testing.assert_close(cat("y", 0), y.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cat("x_grad", 0), x.grad, rtol=1e-5, atol=1e-5)
        # bias of the row layer is replicated but fed sequence shards: partial gradients sum to the full one
        torch.testing.assert_close(outs[0]["b2_grad"].double() + outs[1]["b2_grad"].double(), b2.grad,
                                   rtol=1e-5, atol=1e-5)
    else:
        for o in outs:
            torch.testing.assert_close(o["y"].double(), y.detach(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(o["x_grad"].double(), x.grad, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(o["b2_grad"].double(), b2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cat("w1_grad", 0), w1.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cat("w2_grad", 1), w2.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- ShardSpec

def _full(*shape):
    return torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(shape)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_spec_plain_split(tp):
    full = _full(8, 3)
    spec = ShardSpec(dim=0)
    shards = [spec.shard(full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        assert torch.equal(s, full[r * 8 // tp:(r + 1) * 8 // tp])
    assert torch.equal(spec.unshard(shards), full)
    spec1 = ShardSpec(dim=1)
    full = _full(3, 8)
    shards = [spec1.shard(full, r, tp) for r in range(tp)]
    assert torch.equal(shards[-1], full[:, 8 - 8 // tp:]) and torch.equal(spec1.unshard(shards), full)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_spec_fused_blocks(tp):
    # a fused QKV weight: q (8 rows), k (4 rows), v (4 rows); each rank keeps its slice of each
    full = _full(16, 3)
    spec = ShardSpec(dim=0, blocks=(8, 4, 4))
    shards = [spec.shard(full, r, tp) for r in range(tp)]
    for r, s in enumerate(shards):
        q, k, v = full[:8], full[8:12], full[12:]
        want = torch.cat([q.chunk(tp)[r], k.chunk(tp)[r], v.chunk(tp)[r]])
        assert torch.equal(s, want)
    assert torch.equal(spec.unshard(shards), full)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_shard_spec_vocab_padding(tp):
    full = _full(61, 2) + 1  # no zero rows, so padding is recognisable
    spec = ShardSpec(dim=0, padded_size=64)
    shards = [spec.shard(full, r, tp) for r in range(tp)]
    assert all(s.shape == (64 // tp, 2) for s in shards)
    padded = torch.cat(shards)
    assert torch.equal(padded[:61], full) and torch.all(padded[61:] == 0)
    assert torch.equal(spec.unshard(shards, full_size=61), full)
    assert spec.unshard(shards).shape == (64, 2)


def test_shard_spec_replicated_and_errors():
    full = _full(5, 2)
    spec = ShardSpec()
    assert spec.shard(full, 1, 2) is full and spec.unshard([full, full]) is full
    with pytest.raises(ValueError, match="does not split"):
        ShardSpec(dim=0, blocks=(6, 3)).shard(_full(9, 2), 0, 2)
