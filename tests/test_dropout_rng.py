"""Dropout masks follow Megatron's rules under tensor parallelism, and recomputation replays them.

- Hidden dropout on activations replicated across a TP group draws the same mask on every TP
  rank, so the replicas stay identical.
- Attention dropout (local heads) and hidden dropout under sequence parallelism (different
  sequence shards) draw different masks on different TP ranks.
- No two layers or micro-batches repeat each other's masks.
- Activation checkpointing recomputes with the masks of the first pass and leaves the streams
  as they were, even when a pipeline ran other micro-batches in between: with dropout on,
  loss and gradients with checkpoint=True equal those with checkpoint=False.

Masks are read by wrapping torch's dropout and attention functions on 2 gloo ranks. The attention
mask is recovered by replaying the call's RNG state on a probe input and is then verified by
rebuilding the real call's output from it.
"""
import contextlib
import gc
import math

import torch
import torch.nn.functional as F

from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy, uniform
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import reduce_loss, setup, train_step
from tests.dist_utils import run_distributed
from tests.equivalence import tiny_cfg
from tests.plan_runner import model_argv

P = 0.5
CFG = tiny_cfg("gpt2", num_layers=3)  # head_dim 8 >= seq 8, which the attention probe needs


def mask_plans():
    return {"replicated": uniform(2, 3, tp=2, global_bsz=4, chunks=2),
            "sequence_parallel": uniform(2, 3, tp=2, sp=True, global_bsz=4, chunks=2),
            "pipeline": uniform(2, 3, pp_deg=2, pp_division=[1, 2], global_bsz=4, chunks=2, pipeline_type="gpipe")}


def checkpoint_plans(checkpoint):
    mixed = Plan(world_size=2, pp_deg=1, pp_division=[3], global_bsz=4, chunks=2,
                 layers=[LayerStrategy(tp=2, sp=True, checkpoint=checkpoint),
                         LayerStrategy(tp=2, tp_consec=False, dp_type="zero3", checkpoint=checkpoint),
                         LayerStrategy(tp=1, dp_type="zero2", checkpoint=checkpoint)],
                 vocab=VocabStrategy(tp=2, sp=True))
    return [mixed,
            uniform(2, 3, tp=2, checkpoint=checkpoint, global_bsz=4, chunks=4),
            uniform(2, 3, pp_deg=2, checkpoint=checkpoint, global_bsz=4, chunks=4, pipeline_type="1f1b",
                    pp_division=[1, 2])]


@contextlib.contextmanager
def recording(records):
    """Record every dropout mask drawn inside the block, in call order."""
    dropout, sdpa = F.dropout, F.scaled_dot_product_attention

    def rec_dropout(x, p=0.5, training=True, inplace=False):
        out = dropout(x, p, training, inplace)
        if training and p > 0:
            records.append(("hidden", out.detach() != 0))
        return out

    def rec_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        before = torch.get_rng_state()
        out = sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)
        if dropout_p > 0:
            after = torch.get_rng_state()
            torch.set_rng_state(before)
            s, d = q.shape[-2], v.shape[-1]
            with torch.no_grad():
                onehot = torch.zeros_like(v)
                onehot[..., torch.arange(s), torch.arange(s)] = 1.0
                # uniform causal attention onto one-hot values: entry (i, j) is non-zero iff kept
                probe = sdpa(torch.zeros_like(q), torch.zeros_like(k), onehot, dropout_p=dropout_p,
                             is_causal=is_causal, **kw)
                keep = probe[..., :s] != 0
                causal = torch.ones(s, s, dtype=torch.bool).tril()
                att = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, float("-inf")).softmax(-1)
                rebuilt = (att * keep / (1 - dropout_p)) @ v
            torch.set_rng_state(after)
            assert torch.allclose(rebuilt, out, atol=1e-5), "probe did not recover the attention dropout mask"
            records.append(("attention", keep & causal))
        return out

    F.dropout, F.scaled_dot_product_attention = rec_dropout, rec_sdpa
    try:
        yield
    finally:
        F.dropout, F.scaled_dot_product_attention = dropout, sdpa


def _trainer(plan, world):
    args = build_parser().parse_args(model_argv(CFG, 1, 1e-3, 1.0) + ["--hidden-dropout", str(P),
                                                                      "--attention-dropout", str(P)])
    return setup(args, plan.validate(world_size=world))


def worker(rank, world):
    out = {"masks": {}, "grads": []}
    for name, plan in mask_plans().items():
        tr = _trainer(plan, world)
        records, layer_outputs = [], []
        for layer in tr.stage.layers.values():
            layer.register_forward_hook(lambda m, i, o: layer_outputs.append(o.detach().clone()))
        with recording(records):
            train_step(tr)
        out["masks"][name] = (records, layer_outputs)
        del tr
    for checkpoint in (False, True):
        for plan in checkpoint_plans(checkpoint):
            tr = _trainer(plan, world)
            stats = train_step(tr)
            loss = reduce_loss(tr, stats.loss_sum).item() if tr.ps.is_last_stage else None
            out["grads"].append((loss, gather_model(tr.stage, grads=True)))
            del tr
    gc.collect()
    return out


_results = None


def results():
    global _results
    if _results is None:
        _results = run_distributed(2, worker)
    return _results


def _masks(rank, plan, kind):
    return [m for k, m in results()[rank]["masks"][plan][0] if k == kind]


def _kept_fraction_ok(masks):
    frac = torch.cat([m.float().flatten() for m in masks]).mean().item()
    assert 0.4 < frac < 0.6, frac


def test_replicated_hidden_dropout_is_identical_across_tp_ranks():
    a, b = _masks(0, "replicated", "hidden"), _masks(1, "replicated", "hidden")
    # embedding + 2 per layer, for each of 2 micro-batches
    assert len(a) == len(b) == 2 * (1 + 2 * CFG["num_layers"])
    _kept_fraction_ok(a)
    for ma, mb in zip(a, b):
        assert torch.equal(ma, mb)
    outs = [results()[r]["masks"]["replicated"][1] for r in range(2)]
    assert len(outs[0]) == 2 * CFG["num_layers"]
    for x0, x1 in zip(*outs):  # so the TP replicas of every layer's output stay bitwise equal
        assert torch.equal(x0, x1)


def test_attention_dropout_differs_across_tp_ranks():
    for plan in ("replicated", "sequence_parallel"):
        a, b = _masks(0, plan, "attention"), _masks(1, plan, "attention")
        assert len(a) == len(b) == 2 * CFG["num_layers"]
        causal = torch.ones(a[0].shape[-2:], dtype=torch.bool).tril()
        _kept_fraction_ok([m[..., causal] for m in a])
        for ma, mb in zip(a, b):
            assert ma.shape == mb.shape
            assert not torch.equal(ma, mb), f"{plan}: same attention dropout mask on both TP ranks"


def test_sequence_parallel_hidden_dropout_differs_across_tp_ranks():
    a, b = _masks(0, "sequence_parallel", "hidden"), _masks(1, "sequence_parallel", "hidden")
    assert len(a) == len(b) == 2 * (1 + 2 * CFG["num_layers"])
    _kept_fraction_ok(a)
    for ma, mb in zip(a, b):
        assert ma.shape[0] == CFG["seq_length"] // 2  # sequence shards
        assert not torch.equal(ma, mb), "same dropout mask on two different sequence shards"


def _all_distinct(masks, what):
    for i in range(len(masks)):
        for j in range(i):
            if masks[i].shape == masks[j].shape:
                assert not torch.equal(masks[i], masks[j]), f"{what}: masks {j} and {i} repeat each other"


def test_no_two_layers_or_micro_batches_repeat_a_mask():
    for plan in ("replicated", "sequence_parallel", "pipeline"):
        for rank in range(2):
            for kind in ("hidden", "attention"):
                _all_distinct(_masks(rank, plan, kind), f"{plan}, rank {rank}, {kind} dropout")


def test_pipeline_stages_do_not_repeat_each_others_masks():
    for kind in ("hidden", "attention"):
        _all_distinct(_masks(0, "pipeline", kind) + _masks(1, "pipeline", kind), f"pipeline stages, {kind}")


def test_checkpoint_recomputation_replays_dropout_masks():
    grads = results()[1]["grads"]  # rank 1 is on the last stage of every plan
    n = len(grads) // 2
    for k, plan in enumerate(checkpoint_plans(True)):
        (loss0, g0), (loss1, g1) = grads[k], grads[n + k]
        assert loss0 == loss1, plan.describe()
        assert g0.keys() == g1.keys()
        for name in g0:
            assert g0[name].abs().sum() > 0 or "bias" in name, name
            torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7,
                                       msg=lambda m: f"{plan.describe()}\n{name}: {m}")
