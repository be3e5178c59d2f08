"""Ulysses sequence parallelism, mixed per layer with TP, Megatron-SP and DP/ZeRO, equals the
single-process reference (CPU, gloo, float32): loss, every gradient and the parameters after
three AdamW steps. GQA runs with fewer K/V heads than the Ulysses group (replicated heads)."""
import random

from megatron_galvatron.plan import ULYSSES, LayerStrategy, Plan, VocabStrategy
from tests.equivalence import check_plans, tiny_cfg
from tests.random_plans import divisors


def L(**kw):
    return LayerStrategy(**kw)


def U(tp, **kw):
    return LayerStrategy(tp=tp, sp=ULYSSES, **kw)


def plan(world, layers, vocab, pp=1, chunks=2, global_bsz=8, pipeline="1f1b"):
    n = len(layers)
    return Plan(world_size=world, pp_deg=pp, pp_division=[n // pp] * pp, global_bsz=global_bsz, chunks=chunks,
                layers=layers, vocab=vocab, pipeline_type=pipeline)


def world4_plans(max_tp=4):
    t = max_tp  # the TP layers' degree (TP needs it to divide the K/V heads; Ulysses does not)
    return [
        # Ulysses-4 -> Megatron-SP tp2 -> strided Ulysses-2 under ZeRO-3 -> TP-4; Ulysses vocab
        plan(4, [U(4), L(tp=2, sp=True, dp_type="zero2"), U(2, tp_consec=False, dp_type="zero3"), L(tp=t)],
             VocabStrategy(tp=4, sp=ULYSSES, dp_type="zero3")),
        # plain DP vocab; checkpointed Ulysses; Ulysses next to a same-shaped Megatron-SP layer
        plan(4, [L(tp=1, dp_type="zero3"), U(4, dp_type="zero2", checkpoint=True), L(tp=t, sp=True),
                 U(2, tp_consec=False)], VocabStrategy(tp=2, sp=True)),
        # two pipeline stages, Ulysses on both, strided vocab Ulysses
        plan(4, [U(2), L(tp=2, sp=True), L(tp=2, tp_consec=False), U(2, dp_type="zero3")],
             VocabStrategy(tp=2, tp_consec=False, sp=ULYSSES), pp=2, chunks=2, pipeline="gpipe"),
    ]


def test_world4_gpt2():
    check_plans(4, tiny_cfg("gpt2"), world4_plans())


def test_world4_llama_gqa():
    # 2 K/V heads for Ulysses groups of 4: each K/V head is sent twice
    check_plans(4, tiny_cfg("llama", num_query_groups=2), world4_plans(max_tp=2))


def test_world8_llama_gqa():
    cfg = tiny_cfg("llama", num_query_groups=4, seq_length=16)  # Ulysses-8 sends each K/V head twice
    check_plans(8, cfg, [
        plan(8, [U(8), L(tp=4, tp_consec=False, sp=True), U(2, tp_consec=False, dp_type="zero3"),
                 L(tp=2, dp_type="zero2")], VocabStrategy(tp=8, sp=ULYSSES)),
        plan(8, [L(tp=2, sp=True), U(4, tp_consec=False, checkpoint=True), U(4, dp_type="zero2"), L(tp=4)],
             VocabStrategy(tp=4, sp=ULYSSES, dp_type="zero3"), pp=2),
    ])


def test_world8_gpt2():
    cfg = tiny_cfg("gpt2", seq_length=16)
    check_plans(8, cfg, [
        plan(8, [U(4), U(4, tp_consec=False, dp_type="zero3"), L(tp=4, sp=True), U(2, dp_type="zero2")],
             VocabStrategy(tp=2, tp_consec=False, sp=ULYSSES)),
    ])


def test_world2_float8_ulysses_layers():
    """Float8 linears in Ulysses layers: their casts see each rank's sequence chunk."""
    check_plans(2, tiny_cfg("llama"), [
        plan(2, [U(2, fp8="tensorwise"), U(2, dp_type="zero3", fp8="tensorwise"), L(tp=2, sp=True, fp8="rowwise"),
                 U(2, dp_type="zero2", fp8="rowwise")], VocabStrategy(tp=2, sp=ULYSSES), global_bsz=4),
    ])


def random_mixed_plan(rng, world, cfg):
    """A random plan whose layers and vocab each take TP, Megatron-SP or Ulysses (any group
    layout, DP type, checkpointing), over a random pipeline."""
    pp = rng.choice([1, 2])
    w = world // pp
    heads, groups, seq = cfg["num_attention_heads"], cfg["num_query_groups"], cfg["seq_length"]
    tps = [t for t in divisors(w) if heads % t == 0 and groups % t == 0 and seq % t == 0]
    uls = [u for u in divisors(w) if u > 1 and heads % u == 0 and seq % u == 0]

    def pick(cls, **extra):
        kind = rng.choice(["tp", "sp", "ulysses"])
        tp = rng.choice(uls if kind == "ulysses" else [t for t in tps if t > 1 or kind == "tp"])
        sp = {"tp": False, "sp": True, "ulysses": ULYSSES}[kind]
        return cls(tp=tp, tp_consec=rng.random() < 0.5, dp_type=rng.choice(["ddp", "zero2", "zero3"]), sp=sp,
                   **extra)

    layers = [pick(LayerStrategy, checkpoint=rng.random() < 0.3) for _ in range(cfg["num_layers"])]
    chunks = rng.choice([1, 2])
    return Plan(world_size=world, pp_deg=pp, pp_division=[cfg["num_layers"] // pp] * pp, global_bsz=chunks * w,
                chunks=chunks, layers=layers, vocab=pick(VocabStrategy), pipeline_type=rng.choice(["gpipe", "1f1b"]))


def test_world4_random_mixed_plans():
    rng = random.Random(21)
    cfg = tiny_cfg("llama", num_query_groups=2)
    check_plans(4, cfg, [random_mixed_plan(rng, 4, cfg) for _ in range(5)])
