"""The cost model's memory terms against numbers worked out by hand: model states, activations,
the vocab module and the allocator.

The profile and cluster: tests/cost_model_profile.py.
"""
import pytest

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import Plan, VocabStrategy
from megatron_galvatron.profile_format import parse_hardware, parse_model
from search.comm import Network
from search.stage_memory import InFlight, in_flight, microbatches_in_flight, model_state_bytes
from tests.cost_model_profile import POSITIONS, ddp, hardware_dict, model_dict
from tests.cost_model_profile import cm  # noqa: F401 (fixtures)
from tests.earlier_runtime import EarlierRuntimeCostModel


# ------------------------------------------------------------------ memory

def test_model_states_per_dp_type():
    assert model_state_bytes(1000, 4, "ddp") == 16000
    # fp32 + Adam shards (12/4), bf16 weights kept from forward to backward (2), unsharded fp32
    # gradient accumulated over micro-batches (4)
    assert model_state_bytes(1000, 4, "zero2") == 3000 + 2000 + 4000
    assert model_state_bytes(1000, 4, "zero3") == 16000 / 4
    # a ZeRO unit with one data-parallel rank is replicated by the runtime
    assert model_state_bytes(1000, 1, "zero3") == 16000
    assert model_state_bytes(1000, 1, "zero2") == 16000


def test_layer_memory(cm):
    # replicated (autocast): the profile's bytes per token, plus the bf16 weight copies (2 B per
    # parameter: this profile has no activation_constant_bytes); the backward adds the fp32
    # residual gradient (4 x 64) and the bf16 gradient of the FFN activation (2 x 256) per token
    m = cm.layer_memory(ddp(), 4, 8)
    assert (m.states, m.activation, m.transient) == (16 * 50000, 2000 * 256 + 2 * 50000, (256 + 512) * 256)
    # ZeRO-3 (FSDP: bf16, no autocast): two norms save 2 x 64 bytes per token less each, no weight
    # copies; a bf16 residual gradient; the weights gathered again for the backward
    m = cm.layer_memory(ddp(dp_type="zero3"), 4, 8)
    assert (m.states, m.activation, m.transient) == (16 * 50000 / 4, (2000 - 4 * 64) * 256,
                                                     (128 + 512) * 256 + 2 * 50000)
    m = cm.layer_memory(ddp(dp_type="zero2"), 4, 8)
    assert (m.states, m.activation, m.transient) == (50000 * (12 / 4 + 6), (2000 - 4 * 64) * 256, (128 + 512) * 256)
    # tp2 + sp, checkpointed, replicated (dp 2, 512 tokens): keeps its input; rebuilds everything,
    # weight copies of its 25,000 parameters included; sequence-sharded residual gradient
    m = cm.layer_memory(ddp(2, sp=True, checkpoint=True), 4, 8)
    full = 800 * 512 + 2 * 25000
    assert (m.states, m.activation, m.transient) == (16 * 25000, 64 * 512, full + (4 * 32 + 2 * 128) * 512)
    assert m.persistent(InFlight(3, 3)) == 16 * 25000 + 3 * 64 * 512
    # the same as a ZeRO-2 unit: a bf16 input (half) and the norms' saving on seq/2 tokens
    m = cm.layer_memory(ddp(2, sp=True, checkpoint=True, dp_type="zero2"), 4, 8)
    assert m.activation == 32 * 512
    assert m.transient == (800 - 4 * 64 / 2) * 512 + (2 * 32 + 2 * 128) * 512


def test_backward_work_of_a_gated_mlp():
    llama = GPTConfig(family="llama", num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=4,
                      ffn_hidden_size=256, vocab_size=1000, seq_length=128)
    hw = parse_hardware(hardware_dict())
    c = EarlierRuntimeCostModel(llama, parse_model(model_dict(llama)), Network(hw, num_gpus=8, gpus_per_node=4))
    # gate and up come out of one matmul: a 2 x 256 wide bf16 gradient
    assert c.backward_work_per_token(ddp(), 4) == 4 * 64 + 2 * 512
    assert c.backward_work_per_token(ddp(2, dp_type="zero3"), 2) == 2 * 64 + 2 * 256


def test_micro_batches_in_flight():
    assert [microbatches_in_flight("gpipe", 8, 4, s) for s in range(4)] == [8, 8, 8, 8]
    assert [microbatches_in_flight("1f1b", 8, 4, s) for s in range(4)] == [4, 3, 2, 1]
    assert [microbatches_in_flight("1f1b", 2, 4, s) for s in range(4)] == [2, 2, 2, 1]
    assert microbatches_in_flight("1f1b", 8, 1, 0) == 1
    # alive when a later backward starts: GPipe one fewer each time, 1F1B as many while forwards
    # remain, none when there is a single micro-batch
    assert [in_flight("gpipe", 8, 4, s) for s in range(2)] == [(8, 7), (8, 7)]
    assert [in_flight("1f1b", 8, 4, s) for s in range(4)] == [(4, 4), (3, 3), (2, 2), (1, 1)]
    assert [in_flight("1f1b", 2, 4, s) for s in range(4)] == [(2, 1), (2, 1), (2, 1), (1, 1)]
    assert in_flight("1f1b", 8, 1, 0) == (1, 1) and in_flight("1f1b", 1, 1, 0) == (1, 0)


def test_zero_gradients_appear_in_the_first_backward(cm):
    # 50,000 parameters per layer, dp 4, 256 tokens of (2000 - 4 x 64) bytes each saved
    act = (2000 - 4 * 64) * 256
    z3, z2, rep = (cm.layer_memory(ddp(dp_type=t), 4, 8) for t in ("zero3", "zero2", "ddp"))
    assert (z3.lazy, z3.settled) == (4 * 50000 / 4, 4 * 50000 / 4)
    assert (z2.lazy, z2.settled) == (4 * 50000, 4 * 50000 / 4)
    assert (rep.lazy, rep.settled) == (0, 0)
    # one micro-batch: the first backward starts without the gradient (shard); the alternative,
    # its end, holds the shard but no activation
    assert z3.persistent(InFlight(1, 0)) == max(z3.states - 50000 + act, z3.states)
    assert z2.persistent(InFlight(1, 0)) == max(z2.states - 200000 + act, z2.states - 200000 + 50000)
    # accumulation: the second backward starts with the gradient and one micro-batch alive
    assert z3.persistent(InFlight(1, 1)) == z3.states + act
    assert z2.persistent(InFlight(1, 1)) == z2.states + act
    # GPipe with 4 micro-batches: all four alive without gradients, or three with them
    assert z2.persistent(InFlight(4, 3)) == max(z2.states - 200000 + 4 * act, z2.states + 3 * act)
    assert rep.persistent(InFlight(1, 0)) == rep.states + rep.activation


def test_vocab_memory_copies_and_logits(cm):
    v = VocabStrategy(tp=1)
    assert [cm.vocab_copies(1, 0), cm.vocab_copies(2, 0), cm.vocab_copies(2, 1), cm.vocab_copies(3, 1)] == [1, 1, 1, 0]
    # last stage, 256 tokens per rank: the profile's bytes per token and the head weight's bf16 copy;
    # at the start of the backward the logits' bf16 gradient (2 x 1000 per token) and the head's
    # bf16 weight gradient
    _, m = cm.vocab(v, 4, 8, 2, 1)
    assert (m.states, m.activation, m.transient) == (16 * 64000, 4000 * 256 + 2 * 64000,
                                                     2 * 1000 * 256 + 2 * 64000)
    _, m = cm.vocab(v, 4, 8, 2, 0)
    assert (m.states, m.activation, m.transient) == (16 * (64000 + POSITIONS), 0, 0)
    # one stage, tp2 ZeRO-3 (FSDP, 512 tokens): the final norm saves 2 x 64 bytes per token less,
    # no weight copy; the shard's weights are gathered again for the backward
    _, m = cm.vocab(VocabStrategy(tp=2, dp_type="zero3"), 4, 8, 1, 0)
    assert (m.states, m.activation, m.transient) == (16 * (32000 + POSITIONS) / 2, (2000 - 2 * 64) * 512,
                                                     2 * 500 * 512 + 2 * 32000 + 2 * 32000)


def test_vocab_time_on_the_last_stage(cm):
    fwd, bwd = 5e-4 + 1e-7 * 256, 1e-3 + 2e-7 * 256
    ar = 1e-5 + 2 * 3 / 4 * (4 * 64000) / 100e9
    # the two embedding copies' gradients: an all-reduce between rank 0 and rank 4, across nodes
    tied = 2e-5 + 2 * (1 / 2) * (4 * 64000) / 10e9
    t, _ = cm.vocab(VocabStrategy(tp=1), 4, 8, 2, 1)
    assert t.per_mb == pytest.approx(fwd + bwd)
    step = 1e-10 * 64000
    assert t.per_iter == pytest.approx(1.25 * ar * (1 - 1 / 1.1) + tied + step + step * 16 / 28)
    # first stage: the embedding's backward ends the stage's backward, its all-reduce is exposed
    t, _ = cm.vocab(VocabStrategy(tp=1), 4, 8, 2, 0)
    ar0 = 1e-5 + 2 * 3 / 4 * (4 * (64000 + POSITIONS)) / 100e9
    assert t.per_mb == 0.0
    step0 = 1e-10 * (64000 + POSITIONS)
    assert t.per_iter == pytest.approx(ar0 + tied + step0 + step0 * 16 / 28)


def test_vocab_tensor_parallel_communication(cm):
    # tp2, one stage of 4 ranks: 4 samples = 512 tokens per rank; the embedding's output and the
    # final norm's are fp32 under autocast
    fp32 = 4 * 128 * 64 * 4
    ar = 1e-5 + 2 * (1 / 2) * fp32 / 100e9
    loss = (1e-5 + 512 * 4 / 100e9) + (1e-5 + 2 * 512 * 4 / 100e9)  # max; sum-exp with target logit
    fwd, bwd = 5e-4 + 0.5e-7 * 512, 1e-3 + 1e-7 * 512  # tp2 scaled from the tp1 profile
    t, _ = cm.vocab(VocabStrategy(tp=2), 4, 8, 1, 0)
    assert t.per_mb == pytest.approx(ar + fwd + bwd + ar + loss)


def test_sharded_vocab_gathers_per_forward_call(cm):
    # one stage holds both ends; tp1 ZeRO-3 over 4 ranks, 256 tokens
    fwd, bwd = 5e-4 + 1e-7 * 256, 1e-3 + 2e-7 * 256
    params = 64000 + POSITIONS
    ag = 1e-5 + 3 / 4 * (2 * params) / 100e9
    rs = 1e-5 + 3 / 4 * (4 * params) / 100e9
    t, _ = cm.vocab(VocabStrategy(tp=1, dp_type="zero3"), 4, 8, 1, 0)
    # embedding and head each gather in the forward; the head's backward gathers and reduce-scatters
    # beside its compute; the embedding's backward, the last of the stage, does both exposed
    assert 1.25 * (ag + rs) < 1.1 * bwd
    # and FSDP2's memory passes at 1e-10 s per 28 bytes: each of the 4 gathers copies in 10 B per
    # local parameter (a quarter) and out 4 B per parameter; each of the 2 reduce-scatters 6 B in
    passes = 1e-10 * params * (4 * (10 / 4 + 4) + 2 * 6) / 28
    assert t.per_mb == pytest.approx(fwd + bwd + 2 * ag + 1.25 * (ag + rs) * (1 - 1 / 1.1) + ag + rs + passes)
    t, _ = cm.vocab(VocabStrategy(tp=1, dp_type="zero2"), 4, 8, 1, 0)
    # ZeRO-2: one forward gather, one more after the head's backward resharded; reduce-scatters on
    # the last micro-batch (the head's hidden, the embedding's exposed); the 2 gathers' passes and
    # the fp32 accumulation (10 B) every micro-batch, taken back per iteration, where the 2
    # reduce-scatters copy in
    gathers, accumulate = 1e-10 * params * 2 * (10 / 4 + 4) / 28, 1e-10 * params * 10 / 28
    assert t.per_mb == pytest.approx(fwd + bwd + 2 * ag + gathers + accumulate)
    step = 1e-10 * params / 4
    assert t.per_iter == pytest.approx(1.25 * rs * (1 - 1 / 1.1) + rs + step + step * 12 / 28
                                       + 1e-10 * params * 2 * 6 / 28 - accumulate)


def test_allocator_overhead(cm):
    assert cm.reserved(1e9) == pytest.approx(1.25e9 + 1e9)
    assert cm.allocatable(2.25e9) == pytest.approx(1e9)


# ------------------------------------------------------------------ whole plans

def test_gradient_shards_reserve_their_own_pool(cm):
    """FSDP2 writes a ZeRO unit's fp32 gradient shard on its reduce-scatter stream, whose pool the
    compute stream never reuses: reserved = 1.25 x (the compute stream's peak) + the shards + 1 GB.
    Checked on whole plans of four layers on 4 ranks, one micro-batch and two."""
    shard = 4 * 50000 / 4
    for dp_type in ("zero3", "zero2"):
        for chunks in (1, 2):
            plan = Plan(world_size=4, pp_deg=1, pp_division=[4], global_bsz=8 * chunks, chunks=chunks,
                        layers=[ddp(dp_type=dp_type)] * 4, vocab=VocabStrategy(), pipeline_type="1f1b")
            pred = cm.evaluate(plan)
            m = cm.layer_memory(ddp(dp_type=dp_type), 4, 8)
            flight = InFlight(1, chunks - 1)
            # the compute stream holds everything the allocated peak counts but the shards: a
            # ZeRO-3 unit's from its first backward, a ZeRO-2 unit's only after its last one
            lazy_on_compute = 0 if dp_type == "zero3" else m.lazy
            on_compute = max(m.states - m.lazy + m.activation,
                             m.states - m.lazy + lazy_on_compute + (m.activation if chunks > 1 else 0))
            vocab = pred.stage_allocated[0] - 4 * m.persistent(flight)
            assert pred.stage_reserved[0] == pytest.approx(1.25 * (4 * on_compute + vocab) + 4 * shard + 1e9)
    rep = cm.evaluate(Plan(world_size=4, pp_deg=1, pp_division=[4], global_bsz=8, chunks=1, layers=[ddp()] * 4,
                           vocab=VocabStrategy(), pipeline_type="1f1b"))
    assert rep.stage_reserved[0] == pytest.approx(1.25 * rep.stage_allocated[0] + 1e9)
