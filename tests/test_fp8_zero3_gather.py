"""ZeRO-3 layers with tensorwise float8 linears all-gather those weights as float8 bytes
(fp8/fsdp_gather.py) and still train as the independent reference does: under TP 2 with sp,
activation checkpointing, torch.compile, a pipeline, and 2-3 micro-batches per step over 3 steps.

Each spawned rank also counts what FSDP hands its all-gathers and how often a weight is cast:
every gather of such a layer carries one byte per linear weight element (its norms and biases
still in the compute dtype), the bf16 run's gathers move exactly the linear weights' bf16 bytes
less their half, each weight is cast once per step whatever the micro-batches, and the gathered
float8 weight holds the bytes and scale of casting the whole weight in one place."""
import dataclasses
import math
import os

import pytest
import torch
import torch.distributed as dist

from megatron_galvatron import checkpoint
from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.plan import LayerStrategy as L
from megatron_galvatron.plan import uniform
from megatron_galvatron.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from tests.dist_utils import run_distributed
from tests.equivalence import LR, CLIP, check_plans, tiny_cfg
from tests.plan_runner import run_plan
from tests.test_checkpoint_resume import _losses, _trainer

pytest.importorskip("torchao")

TW = dict(dp_type="zero3", fp8="tensorwise")


def plan(world, layers, **kw):
    return dataclasses.replace(uniform(world, len(layers), global_bsz=kw.pop("global_bsz", 12), **kw),
                               layers=list(layers))


def _unit_bytes(module, dp: int, itemsize: int):
    """(bytes of one rank's all-gather input for a sharded layer whose linears gather in float8,
    the same with every parameter in the compute dtype), from the layer's parameter shapes."""
    linear = {id(m.weight) for m in module.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))}
    fp8 = full = 0
    for p in module.parameters():
        shard = math.ceil(p.shape[0] / dp) * math.prod(p.shape[1:])  # FSDP pads dim 0 to equal shards
        fp8 += shard * (1 if id(p) in linear else itemsize)
        full += shard * itemsize
    return fp8, full


def _cast_as_one_weight(tr, params, dtype):
    """Per float8-gathered weight: whether its gathered bytes and scale are those of casting the
    whole (TP-unsharded) weight at once: amax over the full weight, torchao's rounding."""
    from torchao.float8.float8_training_tensor import Float8TrainingTensor
    e4m3 = torch.float8_e4m3fn
    out = {}
    for u in tr.stage.units():
        if u.module not in tr.model.sharded:
            continue
        linears = {n: m for n, m in u.module.named_modules()
                   if isinstance(m, (ColumnParallelLinear, RowParallelLinear))}
        local = {n: m.weight.full_tensor().to(dtype) for n, m in linears.items()}  # this TP rank's piece
        u.module.unshard()
        for n, m in linears.items():
            w = m.weight
            if not isinstance(w, Float8TrainingTensor):
                out[f"{u.name}.{n}"] = "not gathered in float8"
                continue
            assert not m.fp8.config.round_scales_to_power_of_2
            amax = params[f"{u.name}.{n}.weight"].to(dtype).abs().max().double()
            scale = (torch.finfo(e4m3).max / amax.clamp(min=1e-12)).float()
            want = (local[n].float() * scale).clamp(-torch.finfo(e4m3).max, torch.finfo(e4m3).max).to(e4m3)
            out[f"{u.name}.{n}"] = (torch.equal(w._scale.reshape(()), scale)
                                    and torch.equal(w._data.view(torch.uint8), want.view(torch.uint8)))
        u.module.reshard()
    return out


def counting_worker(rank, world, cfg, plans, steps, lr, clip, extra_argv=()):
    """run_plans, plus per plan: each FSDP all-gather's input (dtype, bytes), the weight casts
    made, the bytes expected of each gather, and _cast_as_one_weight."""
    from megatron_galvatron.fp8.fsdp_gather import Fp8GatheredWeight
    gathers, casts = [], []
    all_gather, float8_shard = dist.all_gather_single, Fp8GatheredWeight._float8_shard

    def recording_gather(output_tensor, input_tensor, group=None, async_op=False):
        gathers.append((input_tensor.dtype, input_tensor.numel() * input_tensor.element_size()))
        return all_gather(output_tensor, input_tensor, group=group, async_op=async_op)

    def counting_shard(self, dtype):
        before = self._cast
        out = float8_shard(self, dtype)
        if self._cast is not before:
            casts.append(dtype)
        return out

    dist.all_gather_single, Fp8GatheredWeight._float8_shard = recording_gather, counting_shard
    bf16 = "--bf16" in extra_argv
    out = []
    try:
        for plan_dict in plans:
            gathers.clear()
            casts.clear()
            tr, res = run_plan(rank, world, cfg, plan_dict, steps, lr, clip, extra_argv)
            res["gathers"], res["casts"] = list(gathers), list(casts)
            res["expected"] = {_unit_bytes(u.module, u.groups.dp, 2 if bf16 else 4) for u in tr.stage.units()
                               if u.module in tr.model.sharded}
            res["fp8_weights"] = sum(isinstance(p._local_tensor, Fp8GatheredWeight)
                                     for m in tr.model.sharded for p in m.parameters())
            res["units"] = len(tr.model.sharded)
            res["as_one_weight"] = _cast_as_one_weight(tr, res["params"], torch.bfloat16 if bf16 else torch.float32)
            out.append(res)
    finally:
        dist.all_gather_single, Fp8GatheredWeight._float8_shard = all_gather, float8_shard
    return out


def check_float8_gathers(results, plans, steps=3):
    """Every FSDP gather of every rank moved float8 linear weights, twice (forward, backward) per
    micro-batch and layer; each weight was cast once per step; the gathered float8 weights are one
    whole-weight cast."""
    for r, per_rank in enumerate(results):
        for k, res in enumerate(per_rank):
            p = plans[k]
            assert res["units"] > 0 and res["fp8_weights"] == 4 * res["units"], (r, k)
            (fp8_bytes, full_bytes), = res["expected"]  # every sharded unit here is such a layer
            assert fp8_bytes < full_bytes
            # (a pipeline's 1F1B may gather a layer once more per step, where it interleaves)
            least = steps * p.chunks * 2 * res["units"]
            assert len(res["gathers"]) == least or p.pp_deg > 1 and len(res["gathers"]) > least, (r, k)
            assert set(res["gathers"]) == {(torch.uint8, fp8_bytes)}, (r, k, set(res["gathers"]), fp8_bytes)
            assert len(res["casts"]) == steps * res["fp8_weights"], (r, k, len(res["casts"]))
            assert res["as_one_weight"] and all(v is True for v in res["as_one_weight"].values()), res["as_one_weight"]


def test_zero3_fp8_gather_two_ranks():
    """dp 2: eager with a checkpointed layer and a TP-2 rowwise layer beside (not sharded);
    compiled with checkpointing; 2 and 3 micro-batches."""
    plans = [plan(2, [L(**TW), L(checkpoint=True, **TW), L(tp=2, fp8="rowwise"), L(**TW)], chunks=2),
             dataclasses.replace(plan(2, [L(checkpoint=True, **TW), L(**TW), L(**TW), L(tp=2, sp=True)], chunks=3),
                                 compile=True)]
    results = check_plans(2, tiny_cfg("llama"), plans, worker=counting_worker)
    check_float8_gathers(results, plans)


def test_zero3_fp8_gather_four_ranks_tp_sp_pipeline():
    """tp 2 (sp, one layer checkpointed) over dp 2; and a two-stage 1F1B pipeline of dp 2 stages."""
    plans = [plan(4, [L(tp=2, sp=True, **TW), L(tp=2, sp=True, checkpoint=True, **TW), L(tp=2, **TW),
                      L(tp=2, sp=True, **TW)], chunks=3),
             plan(4, [L(**TW), L(checkpoint=True, **TW), L(**TW), L(**TW)], pp_deg=2, chunks=3)]
    results = check_plans(4, tiny_cfg("gpt2"), plans, worker=counting_worker)
    check_float8_gathers(results, plans)


def test_zero3_fp8_gather_uneven_shards():
    """dp 3 over rows that 3 does not divide (dense 40, gate_up 128, fc2 40): FSDP2 pads each shard,
    so does the float8 one (all-gather inputs of equal size), and the padding stays out of the
    scale and the weight."""
    cfg = tiny_cfg("llama", num_layers=2, hidden_size=40, num_attention_heads=4, num_query_groups=4)
    plans = [plan(3, [L(**TW), L(checkpoint=True, **TW)], chunks=2)]
    results = check_plans(3, cfg, plans, worker=counting_worker)
    check_float8_gathers(results, plans)


def test_zero3_fp8_gather_bf16_halves_the_weights_bytes():
    """With bf16 compute, the same layers' gathers move each linear weight in 1 byte instead of
    the 2 of the plan without float8 (measured), the rest of the layer unchanged."""
    fp8 = plan(2, [L(**TW), L(checkpoint=True, **TW)], chunks=2)
    bf16 = plan(2, [L(dp_type="zero3"), L(dp_type="zero3", checkpoint=True)], chunks=2)
    args = (tiny_cfg("llama", num_layers=2), [fp8.to_dict(), bf16.to_dict()], 1, LR, CLIP, ["--bf16"])
    for a, b in run_distributed(2, counting_worker, *args):
        (fp8_bytes, full_bytes), = a["expected"]
        check_float8_gathers([[a]], [fp8], steps=1)
        assert {g[0] for g in b["gathers"]} == {torch.bfloat16} and len(b["gathers"]) == len(a["gathers"])
        assert {g[1] for g in b["gathers"]} == {full_bytes}
        weights = 2 * (full_bytes - fp8_bytes)  # the linear weights' bf16 bytes
        assert weights > 0.9 * full_bytes and fp8_bytes == full_bytes - weights // 2


SAVE_AT, MORE = 2, 2
RESUME = plan(2, [L(**TW), L(checkpoint=True, **TW), L(tp=2), L(**TW)], global_bsz=8, chunks=2)


def _save_and_go_on(rank, world, root):
    tr = _trainer(tiny_cfg("llama"), RESUME.to_dict(), world)
    _losses(tr, SAVE_AT)
    checkpoint.save(tr.checkpoint_state(), root)
    return {"saved": gather_model(tr.stage), "next": _losses(tr, MORE)}


def _resume(rank, world, root):
    tr = _trainer(tiny_cfg("llama"), RESUME.to_dict(), world, ["--load", root])
    return {"params": gather_model(tr.stage), "next": _losses(tr, MORE)}


def test_zero3_fp8_gather_checkpoint_stores_masters_and_resumes(tmp_path):
    """The checkpoint holds the fp32 master weights at their full shapes (no float8 copy), and the
    resumed run, which casts them again, repeats the uninterrupted run's losses."""
    from safetensors import safe_open
    root = str(tmp_path / "ckpt")
    before = run_distributed(2, _save_and_go_on, root)[-1]
    after = run_distributed(2, _resume, root)[-1]
    for k, t in before["saved"].items():
        assert torch.equal(after["params"][k], t), k
    assert after["next"] == before["next"]
    ckpt = os.path.join(root, open(os.path.join(root, "latest")).read().strip())
    stored = {}
    for name in os.listdir(ckpt):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(ckpt, name), "pt") as f:
                stored.update({k: f.get_tensor(k) for k in f.keys() if k.startswith("model/")})
    for k, t in before["saved"].items():
        assert stored[f"model/{k}"].dtype == torch.float32 and stored[f"model/{k}"].shape == t.shape, k
