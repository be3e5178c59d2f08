"""Pieces of the model profiler against numbers worked out by hand."""
import torch
from torch import nn

from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.profiling.comm import group_sizes, partition
from megatron_galvatron.profiling.memory import saved_bytes
from megatron_galvatron.profiling.model import ModelProfiler, ModelSettings, valid_tp_degrees
from megatron_galvatron.profiling.shards import ShardGroups


def test_saved_bytes_of_an_mlp():
    h, f, tokens = 16, 64, 10
    mlp = nn.Sequential(nn.Linear(h, f), nn.ReLU(), nn.Linear(f, h))
    x = torch.randn(tokens, h, requires_grad=True)
    # Linear saves its input, ReLU its output (= the second Linear's input, one storage)
    got, delta = saved_bytes(mlp, lambda: mlp(x))
    assert got == 4 * tokens * (h + f)
    assert delta == -1  # no CUDA allocator to ask on CPU


def _cfg(**kw):
    base = dict(family="gpt2", num_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=100, seq_length=16)
    base.update(kw)
    return GPTConfig(**base)


def test_shard_shapes_are_those_of_tp_rank_0():
    cfg = _cfg(family="llama", num_query_groups=2, ffn_hidden_size=48)
    prof = ModelProfiler(cfg, torch.device("cpu"), ModelSettings([1, 2], [16], [1, 2], dtype="fp32"))
    shards = ShardGroups(2)
    try:
        layer = prof.layer(shards, 2, False)
        shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    finally:
        shards.close()
    h, hd, f = 32, 8, 48
    assert shapes["attention.qkv.weight"] == ((4 + 2 * 2) * hd // 2, h)
    assert shapes["attention.dense.weight"] == (h, 4 * hd // 2)
    assert shapes["mlp.gate_up.weight"] == (2 * f // 2, h)
    assert shapes["mlp.fc2.weight"] == (h, f // 2)
    assert shapes["input_norm.weight"] == (h,)


def test_valid_tp_degrees():
    cfg = _cfg(num_attention_heads=4, ffn_hidden_size=96)
    assert valid_tp_degrees(cfg, [1, 2, 3, 4, 8]) == [1, 2, 4]


def _layer_profile(cfg, dtype: str):
    """The layer tables of a CPU profile at tp 1 and 2, micro-batches 1 and 3, seq 16."""
    s = ModelSettings(micro_batch_sizes=[1, 3], seq_lengths=[16], tp_degrees=[1, 2], dtype=dtype,
                      warmup=0, iters=1, progress=False)
    prof = ModelProfiler(cfg, torch.device("cpu"), s)
    shards = ShardGroups(2)

    class Bar:
        def update(self, n):
            pass
    try:
        return prof.layer_profile(shards, Bar())
    finally:
        shards.close()


def test_layer_memory_per_token():
    cfg = _cfg()
    layer = _layer_profile(cfg, "fp32")
    mem = layer["memory"]
    h = cfg.hidden_size
    # a checkpointed layer keeps only its fp32 input, sequence-sharded under sp
    assert mem["checkpoint_bytes_per_token"]["tp1"] == 4 * h
    assert mem["checkpoint_bytes_per_token"]["tp2"] == 4 * h
    assert mem["checkpoint_bytes_per_token"]["tp2_sp"] == 4 * h / 2
    act = mem["activation_bytes_per_token"]
    # sp shards what the two LayerNorms save: their fp32 inputs and per-token mean and rstd;
    # the norms' outputs are gathered to full length before the linears save them either way
    assert act["tp1"] > act["tp2"] > act["tp2_sp"]
    assert act["tp2"] - act["tp2_sp"] == 2 * (4 * h + 2 * 4) / 2
    assert mem["param_count"] == cfg.layer_param_count()


def test_comm_groups_are_the_runtime_tp_groups():
    assert partition(8, 2, "consec") == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert partition(8, 2, "strided") == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert partition(8, 4, "strided") == [(0, 2, 4, 6), (1, 3, 5, 7)]
    assert partition(8, 8, "consec") == [tuple(range(8))]
    assert group_sizes(8) == [2, 4, 8] and group_sizes(6) == [2, 6] and group_sizes(1) == []


def test_bf16_unit_saves_a_bf16_residual_stream():
    """With bf16 the layer is measured again as the runtime runs it (bf16 weights, no autocast):
    each norm then saves a bf16 input and output where under autocast it saves an fp32 input and
    the bf16 cast, and a checkpointed layer keeps a bf16 input."""
    cfg = _cfg()
    layer = _layer_profile(cfg, "bf16")
    h = cfg.hidden_size
    mem, bf16 = layer["memory"], layer["bf16"]
    assert bf16["checkpoint_bytes_per_token"] == {"tp1": 2 * h, "tp2": 2 * h, "tp2_sp": h}
    for key, norm_tokens in (("tp1", 1.0), ("tp2", 1.0), ("tp2_sp", 0.5)):
        saved = mem["activation_bytes_per_token"][key] - bf16["activation_bytes_per_token"][key]
        # 2 x hidden bytes per norm token, within the norms' per-token statistics
        assert 4 * h * norm_tokens <= saved <= (4 * h + 16) * norm_tokens
    assert set(bf16["time"]) == {"tp1", "tp2", "tp2_sp"}


def _collectives_of_the_overlap_test(rank, world):
    import torch.distributed as dist

    from megatron_galvatron.profiling.comm import collective_call
    out = {}
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        call, full, shard = collective_call(op, 64 * 4, dist.group.WORLD, world, torch.device("cpu"))
        call()  # buffers of ones: sums come back as the world size, gathers as ones
        out[op] = (full.numel(), float(full.sum()), shard.numel(), float(shard.sum()))
    return out


def test_overlap_test_runs_each_collective_on_buffers_of_its_size():
    """profile_comm's per-collective overlap test: the all-reduce over a 64-float buffer, the
    all-gather into one and the reduce-scatter out of one (2 gloo ranks)."""
    from tests.dist_utils import run_distributed
    for res in run_distributed(2, _collectives_of_the_overlap_test):
        assert res["all_reduce"][:2] == (64, 128.0)             # each element summed over 2 ranks
        assert res["all_gather"] == (64, 64.0, 32, 32.0)        # two 32-element shards of ones gathered
        assert res["reduce_scatter"] == (64, 64.0, 32, 64.0)    # a 32-element shard of sums of 2
