"""A generator of random valid plans: per-layer strategies, pipeline split, schedule, vocab."""
import random

from megatron_galvatron.plan import LayerStrategy, Plan, VocabStrategy


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def random_plan(rng: random.Random, world: int, num_layers: int, heads: int, groups: int, seq: int) -> Plan:
    pp = rng.choice([d for d in divisors(world) if d <= min(4, num_layers)])
    w = world // pp
    tps = [t for t in divisors(w) if heads % t == 0 and groups % t == 0 and seq % t == 0]

    def strategy(cls, **extra):
        tp = rng.choice(tps)
        return cls(tp=tp, tp_consec=rng.random() < 0.5, dp_type=rng.choice(["ddp", "zero2", "zero3"]),
                   sp=tp > 1 and rng.random() < 0.5, **extra)

    layers = [strategy(LayerStrategy, checkpoint=rng.random() < 0.4) for _ in range(num_layers)]
    cuts = sorted(rng.sample(range(1, num_layers), pp - 1))
    division = [b - a for a, b in zip([0] + cuts, cuts + [num_layers])]
    chunks = rng.choice([1, 2, 4])
    # Every layer's DP degree must divide the micro-batch: use a multiple of the stage size.
    global_bsz = chunks * w
    return Plan(world_size=world, pp_deg=pp, pp_division=division, global_bsz=global_bsz, chunks=chunks,
                layers=layers, vocab=strategy(VocabStrategy), pipeline_type=rng.choice(["gpipe", "1f1b"]))
