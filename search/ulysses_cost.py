"""Price of a Ulysses layer (and vocab unit): its compute twin plus the all-to-alls.

A rank of a Ulysses group of u ranks in a stage of W holds whole parameters and computes
micro_batch / (W / u) samples' worth of sequence chunks of 1/u of their positions: per rank
that is the linears of micro_batch / W samples and 1/u of the attention of micro_batch / (W / u)
whole sequences, which is the work of a tp = 1 layer fed micro_batch / W samples (the profile's
fits are in tokens at the profiled sequence length). Its parameters are replicated or ZeRO-
sharded over the whole stage, as that twin's are with dp = W. So the layer costs its twin
(tp 1, fractional samples allowed) plus, per micro-batch, the exchange of q, k, v (K/V heads
replicated up to the group) and of the attention output, in the forward, again in the backward,
and once more when a checkpointed layer recomputes its forward.

The hardware profile's all_to_all entries price the exchanges; a profile without them prices
them with all-gather bandwidth (nccl-tests defines both bus bandwidths with the same (n-1)/n
factor, and each rank sends and receives (n-1)/n of its buffer either way), and says so.
"""
from __future__ import annotations

import dataclasses

from megatron_galvatron.layout import Layout
from megatron_galvatron.sequence_parallel.ulysses import kv_replication
from search.stage_memory import BF16, FP32


def compute_twin(s):
    """The tp = 1 strategy whose compute, memory and DP traffic a Ulysses strategy has."""
    return dataclasses.replace(s, tp=1, sp=False)


def all_to_all_op(hw) -> str:
    """The collective whose measurements price an all-to-all on this hardware profile."""
    return "all_to_all" if hw.collectives.get("all_to_all") else "all_gather"


def exchange_seconds(cost, s, stage_world: int, global_micro_batch: float) -> float:
    """One forward's all-to-alls of a Ulysses layer, per micro-batch (a backward moves the same)."""
    m, u = cost.model, s.tp
    tokens = global_micro_batch / stage_world * m.seq_length  # per rank
    width = BF16 if cost.bf16_unit(s.dp_type, stage_world) else FP32
    kv = m.num_query_groups * kv_replication(m.num_query_groups, u)
    qkv = tokens * (m.num_attention_heads + 2 * kv) * m.head_dim * width
    out = tokens * m.num_attention_heads * m.head_dim * width
    stride = Layout.of(s, stage_world).strides(stage_world)[0]
    op = all_to_all_op(cost.net.hw)
    return cost.net.collective(op, u, stride, qkv) + cost.net.collective(op, u, stride, out)


def layer_time(cost, s, stage_world: int, global_micro_batch: float):
    t = cost.layer_time(compute_twin(s), stage_world, global_micro_batch)
    a2a = exchange_seconds(cost, s, stage_world, global_micro_batch) * (3 if s.checkpoint else 2)
    return dataclasses.replace(t, per_mb=t.per_mb + a2a)


def layer_memory(cost, s, stage_world: int, global_micro_batch: float):
    return cost.layer_memory(compute_twin(s), stage_world, global_micro_batch)


def vocab(cost, v, stage_world: int, global_micro_batch: float, pp_deg: int, stage: int):
    """Each rank embeds and scores its own chunk: a tp = 1 vocab unit, nothing exchanged."""
    return cost.vocab(compute_twin(v), stage_world, global_micro_batch, pp_deg, stage)
