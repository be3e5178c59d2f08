"""The benchmark's plain PyTorch baselines: the plain GPT is the same model as ours, and the
DDP / FSDP2 wrappers train it like one process on the whole batch."""
import pytest
import torch

from megatron_galvatron.benchmark.baselines import BaselineSpec, _Ours, _Plain, baseline_step, build_baseline
from megatron_galvatron.benchmark.plain_gpt import PlainGPT
from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig
from tests.dist_utils import run_distributed

CPU = torch.device("cpu")


def _cfg(family):
    kw = dict(num_query_groups=2) if family == "llama" else {}
    return GPTConfig(family=family, num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100,
                     seq_length=12, **kw)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_plain_gpt_matches_our_model(family):
    cfg = _cfg(family)
    ours = _Ours(cfg, CPU, seed=3, checkpoint=False)
    plain = PlainGPT(cfg, CPU).load_from(ours.stage)
    assert sum(p.numel() for p in plain.parameters()) == cfg.param_count()
    tokens = torch.randint(0, cfg.vocab_size, (3, cfg.seq_length + 1), generator=torch.Generator().manual_seed(0))
    a = ours(tokens[:, :-1], tokens[:, 1:])
    b = plain(tokens[:, :-1], tokens[:, 1:])
    assert abs(a.item() - b.item()) < 1e-5
    a.backward()
    b.backward()
    if family == "gpt2":
        torch.testing.assert_close(plain.wte.weight.grad, ours.stage.vocab.word_embeddings.weight.grad[:100],
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain.blocks[1].qkv.weight.grad, ours.stage.layers["1"].attention.qkv.weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain.blocks[0].down.weight.grad, ours.stage.layers["0"].mlp.fc2.weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_plain_checkpointing_gives_the_same_gradients():
    cfg = _cfg("gpt2")
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1), generator=torch.Generator().manual_seed(1))
    grads = []
    for ckpt in (False, True):
        m = _Plain(cfg, CPU, seed=5, checkpoint=ckpt)
        m(tokens[:, :-1], tokens[:, 1:]).backward()
        grads.append([p.grad for p in m.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


def test_spec_parsing():
    assert BaselineSpec.parse("fsdp2+ckpt+ourmodel") == BaselineSpec("fsdp2", True, False, True)
    assert BaselineSpec.parse("ddp") == BaselineSpec("ddp")
    for bad in ("zero3", "fsdp2+fast", "ddp+ckpt+x"):
        with pytest.raises(UserError, match="--baselines"):
            BaselineSpec.parse(bad)


def _wrapped_steps(rank, world, kind, family, chunks):
    cfg = _cfg(family)
    model, opt, autocast = build_baseline(BaselineSpec.parse(kind), cfg, CPU, seed=7, bf16=False)
    gen = torch.Generator().manual_seed(11)
    losses = []
    for _ in range(2):
        tokens = torch.randint(0, cfg.vocab_size, (4, cfg.seq_length + 1), generator=gen)
        mine = tokens[rank * 2:(rank + 1) * 2]
        loss = baseline_step(model, opt, mine[:, :-1], mine[:, 1:], autocast, CPU, chunks)
        t = loss.clone()
        torch.distributed.all_reduce(t)
        losses.append(t.item() / world)
    if kind.startswith("fsdp2"):
        wpe = model.wpe.weight.full_tensor()
    else:
        wpe = model.module.wpe.weight.detach().clone()
    return losses, wpe


@pytest.mark.parametrize("kind,chunks", [("ddp", 1), ("fsdp2", 1), ("ddp", 2), ("fsdp2", 2)])
def test_wrapped_baseline_equals_one_process(kind, chunks):
    """Each of 2 ranks takes half the batch, in ``chunks`` accumulated micro-batches."""
    cfg = _cfg("gpt2")
    ref = _Plain(cfg, CPU, seed=7, checkpoint=False)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.01)
    gen = torch.Generator().manual_seed(11)
    ref_losses = []
    for _ in range(2):
        tokens = torch.randint(0, cfg.vocab_size, (4, cfg.seq_length + 1), generator=gen)
        ref_losses.append(baseline_step(ref, opt, tokens[:, :-1], tokens[:, 1:], False, CPU).item())
    for losses, wpe in run_distributed(2, _wrapped_steps, kind, "gpt2", chunks):
        assert losses == pytest.approx(ref_losses, abs=1e-5)
        torch.testing.assert_close(wpe, ref.wpe.weight.detach(), atol=1e-6, rtol=1e-5)


def _sizes_each_rank_runs(rank, world):
    """run_baseline on ranks whose own timings disagree: rank 1 finds micro-batch 2 slower than
    4 and would stop there, rank 0 finds it faster and would go on to micro-batch 1."""
    from megatron_galvatron.benchmark import runner
    ran = []
    finish = runner._finish

    def timed(res, cfg, times, tokens, world_, device, states):
        out = finish(res, cfg, times, tokens, world_, device, states)
        mbs = res.global_micro_batch // world_
        ran.append(mbs)
        out.tokens_per_s_per_gpu = {4: 100.0, 2: 200.0 if rank == 0 else 50.0, 1: 10.0}[mbs]
        return out
    runner._finish = timed
    res = runner.run_baseline("ddp", _cfg("gpt2"), torch.device("cpu"), 0, False, [4, 2, 1], 1, 0, global_batch=8)
    return ran, res.global_micro_batch


def test_ranks_whose_timings_disagree_try_the_same_micro_batches():
    """The choice follows rank 0 on every rank (else the ranks run different sizes and wait on
    each other's collectives for ever)."""
    (ran0, mb0), (ran1, mb1) = run_distributed(2, _sizes_each_rank_runs, timeout=240)
    assert ran0 == ran1 == [4, 2, 1] and mb0 == mb1 == 2 * 2
