"""Time training configurations side by side: a plan through this runtime, and the plain
PyTorch baselines, each at the largest micro-batch that fits, with CUDA-synchronised timing."""
import gc
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_galvatron.benchmark.baselines import BaselineSpec, baseline_step, build_baseline
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import Plan
from megatron_galvatron.training import metrics
from megatron_galvatron.training.train import setup, train_step


@dataclass
class Result:
    name: str
    status: str
    global_micro_batch: int = 0  # samples in one micro-batch over all data-parallel ranks
    global_batch: int = 0
    iter_time_s: float = 0.0
    tokens_per_s_per_gpu: float = 0.0
    tflops_per_gpu: float = 0.0
    mfu: Optional[float] = None
    peak_mem_gb: float = 0.0
    predicted_iter_time_s: Optional[float] = None
    predicted_peak_mem_gb: Optional[float] = None  # allocated, the fullest stage
    plan: Optional[dict] = None
    times: List[float] = field(default_factory=list)
    sm_clock_mhz: Optional[float] = None  # mean over timed iterations, sampled while the step runs
    power_w: Optional[float] = None
    rounds: int = 0
    # cudaMalloc failures the caching allocator recovered from by freeing its cache and retrying
    # (each synchronizes the device): a sign the configuration runs at the edge of memory
    alloc_retries: int = 0
    peak_reserved_gb: float = 0.0  # what the caching allocator held at most (max over ranks)
    outside_allocator_gb: float = 0.0  # device memory in use beyond the allocator's (context, NCCL, ...)
    tried: Dict[int, float] = field(default_factory=dict)  # baselines: samples per GPU -> tokens/s/GPU
    # rank 0's caching allocator after the last timed step, per CUDA stream (see allocator_pools)
    pools: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_record(cls, d: dict) -> "Result":
        """A result as a benchmark JSON records it; runs before the name global_micro_batch
        recorded it as micro_batch."""
        d = dict(d)
        if "micro_batch" in d:
            d["global_micro_batch"] = d.pop("micro_batch")
        return cls(**d)


def _all_ok(ok: bool, device) -> bool:
    t = torch.tensor([0.0 if ok else 1.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.item() == 0


def _rank0_says(flag: bool, device) -> bool:
    """Rank 0's value of a decision each rank could take from its own timings: ranks whose
    timings disagree would otherwise go on to different configurations and wait on each other's
    collectives for ever."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_initialized():
        dist.broadcast(t, 0)
    return t.item() == 1.0


def _cleanup(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.reset_accumulated_memory_stats(device)


def _gpu_state(device):
    """(SM clock MHz, power W) now, or None where NVML cannot be read. Under a sustained load
    an H100/H200 meets its power cap and lowers its clock, so every result carries both."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.clock_rate(device)), torch.cuda.power_draw(device) / 1000.0
    except Exception:  # no NVML bindings, or a device they cannot read
        return None


def _timed(step, iters: int, warmup: int, device, states: Optional[list] = None) -> List[float]:
    times = []
    for i in range(warmup + iters):
        metrics.synchronize(device)
        t0 = time.perf_counter()
        step()
        state = _gpu_state(device) if i >= warmup else None  # the step's kernels are still running
        metrics.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            if state is not None and states is not None:
                states.append(state)
    return times


def allocator_pools(device) -> Dict[str, Dict[str, float]]:
    """Per CUDA stream, GiB: what the caching allocator holds (reserved), how much of it is
    allocated now, and its largest free block. Each stream allocates from its own segments, so
    memory FSDP2's all-gather and reduce-scatter streams hold is not reusable by the compute
    stream; without an empty_cache, what a stream holds after the step is what it held at most
    (less any retries), which apportions peak reserved memory to the streams."""
    if device.type != "cuda":
        return {}
    out: Dict[str, Dict[str, float]] = {}
    for seg in torch.cuda.memory_snapshot():
        if seg.get("device", device.index) != device.index:
            continue
        pool = out.setdefault(str(seg["stream"]), {"reserved_gb": 0.0, "allocated_gb": 0.0,
                                                   "largest_free_gb": 0.0, "segments": 0})
        pool["reserved_gb"] += seg["total_size"] / 2 ** 30
        pool["allocated_gb"] += seg["allocated_size"] / 2 ** 30
        pool["segments"] += 1
        for b in seg["blocks"]:
            if b["state"] == "inactive":
                pool["largest_free_gb"] = max(pool["largest_free_gb"], b["size"] / 2 ** 30)
    return out


def _finish(res: Result, cfg: GPTConfig, times, tokens_per_iter: int, world: int, device, states=()) -> Result:
    res.times = list(res.times) + list(times)  # earlier rounds' times stay
    res.rounds += 1
    if states:
        n = res.rounds  # running mean over rounds
        clock, power = float(np.mean([s[0] for s in states])), float(np.mean([s[1] for s in states]))
        res.sm_clock_mhz = clock if res.sm_clock_mhz is None else res.sm_clock_mhz + (clock - res.sm_clock_mhz) / n
        res.power_w = power if res.power_w is None else res.power_w + (power - res.power_w) / n
    res.iter_time_s = float(np.median(res.times))
    res.tokens_per_s_per_gpu = tokens_per_iter / res.iter_time_s / world
    res.tflops_per_gpu = res.tokens_per_s_per_gpu * cfg.flops_per_token() / 1e12
    peak_flops = metrics.peak_flops(device)
    res.mfu = res.tflops_per_gpu * 1e12 / peak_flops if peak_flops else None
    cuda = device.type == "cuda"
    retries = torch.cuda.memory_stats(device).get("num_alloc_retries", 0) if cuda else 0
    reserved = torch.cuda.max_memory_reserved(device) / 2 ** 30 if cuda else 0.0
    outside = 0.0
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        outside = (total - free - torch.cuda.memory_reserved(device)) / 2 ** 30
    if cuda and (not dist.is_initialized() or dist.get_rank() == 0):
        res.pools = allocator_pools(device)
    peak = torch.tensor([metrics.peak_memory_gb(device), float(retries), reserved, outside], device=device)
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)  # the fullest rank (stages differ)
    res.peak_mem_gb = max(res.peak_mem_gb, peak[0].item())
    res.alloc_retries = max(res.alloc_retries, int(peak[1].item()))
    res.peak_reserved_gb = max(res.peak_reserved_gb, peak[2].item())
    res.outside_allocator_gb = max(res.outside_allocator_gb, peak[3].item())
    return res


def run_plan(name: str, args, plan: Plan, iters: int, warmup: int, res: Optional[Result] = None) -> Result:
    """Time ``plan``; ``res`` is the result of an earlier round, whose times this round adds to."""
    if res is None:
        res = Result(name=name, status="ok", plan=plan.to_dict(), global_batch=plan.global_bsz,
                     global_micro_batch=plan.global_micro_batch_size,
                     predicted_iter_time_s=plan.predicted.get("iter_time_s"))
        pm = plan.predicted.get("peak_alloc_gb", plan.predicted.get("peak_mem_gb"))
        res.predicted_peak_mem_gb = max(pm) if isinstance(pm, list) and pm else pm
    elif res.status != "ok":
        return res
    tr, states = None, []
    try:
        args.train_iters = iters + warmup
        tr = setup(args, plan)
        device = tr.device
        _cleanup(device)
        times = _timed(lambda: train_step(tr), iters, warmup, device, states)
        ok = True
    except torch.OutOfMemoryError:
        ok, device = False, torch.device("cuda", torch.cuda.current_device())
    if not _all_ok(ok, device):
        tr = None
        _cleanup(device)
        res.status = "oom"
        return res
    out = _finish(res, tr.cfg, times, plan.global_bsz * tr.cfg.seq_length, plan.world_size, device, states)
    tr = None
    _cleanup(device)
    return out


def run_baseline(name: str, cfg: GPTConfig, device, seed: int, bf16: bool, micro_batches: List[int],
                 iters: int, warmup: int, res: Optional[Result] = None, global_batch: int = 0) -> Result:
    """The fastest micro-batch (per GPU) that fits: sizes are tried from the largest down and
    the search stops at the first that fits but is slower than a larger one (smaller ones only
    add launch and optimizer overhead per token). With ``global_batch`` each step accumulates
    micro-batches up to it (sizes that do not divide it are skipped). ``tried`` records tokens/s/GPU
    per size (0: out of memory). A later round (``res`` given) re-times what the first round chose."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    spec = BaselineSpec.parse(name, world)
    if res is not None:
        if res.status != "ok":
            return res
        micro_batches = [res.global_micro_batch // world]
    if global_batch:
        micro_batches = [m for m in micro_batches if global_batch % (m * world) == 0]
    best, tried = None, {}
    for mbs in sorted(micro_batches, reverse=True):
        model = opt = None
        gbs = global_batch or mbs * world
        chunks = gbs // (mbs * world)
        this = res or Result(name=name, status="ok", global_micro_batch=mbs * world, global_batch=gbs)
        states = []
        try:
            _cleanup(device)
            model, opt, autocast = build_baseline(spec, cfg, device, seed, bf16)
            gen = torch.Generator(device="cpu").manual_seed(seed)
            tokens = torch.randint(0, cfg.vocab_size, (mbs * chunks, cfg.seq_length + 1), generator=gen).to(device)
            times = _timed(lambda: baseline_step(model, opt, tokens[:, :-1], tokens[:, 1:], autocast, device, chunks),
                           iters, warmup, device, states)
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        fits = _all_ok(ok, device)
        out = _finish(this, cfg, times, gbs * cfg.seq_length, world, device, states) if fits else None
        model = opt = None
        _cleanup(device)
        tried[mbs] = out.tokens_per_s_per_gpu if out else 0.0
        if out is None:
            continue
        if _rank0_says(best is not None and out.tokens_per_s_per_gpu <= best.tokens_per_s_per_gpu, device):
            break
        best = out
    if best is None:
        return Result(name=name, status="oom", tried=tried)
    if res is None:
        best.tried = tried
    return best


def table(results: List[Result]) -> str:
    head = f"{'config':<28} {'status':<6} {'mb':>4} {'gbs':>5} {'iter s':>8} {'tok/s/GPU':>10} {'TFLOP/s':>8} " \
           f"{'MFU':>6} {'peak GB':>8} {'pred s':>8} {'pred GB':>8} {'SM MHz':>7} {'W':>5}"
    rows = [head]
    for r in results:
        f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
        rows.append(f"{r.name:<28} {r.status:<6} {r.global_micro_batch:>4} {r.global_batch:>5} {r.iter_time_s:>8.4f} "
                    f"{r.tokens_per_s_per_gpu:>10.0f} {r.tflops_per_gpu:>8.1f} {f(r.mfu, '%.3f'):>6} "
                    f"{r.peak_mem_gb:>8.2f} {f(r.predicted_iter_time_s, '%.4f'):>8} "
                    f"{f(r.predicted_peak_mem_gb, '%.2f'):>8} {f(r.sm_clock_mhz, '%.0f'):>7} {f(r.power_w, '%.0f'):>5}")
    # float8 matmuls run faster than that peak, so MFU states the model's FLOPs against the bf16 one
    rows.append("MFU: model FLOPs per second over the GPU's dense bf16 peak (for float8 layers too)")
    return "\n".join(rows)


def per_round(r: Result) -> List[float]:
    """tokens/s/GPU of each round of `r`: the median of that round's own timed iterations."""
    if r.status != "ok" or not r.rounds or len(r.times) < r.rounds:
        return []
    n = len(r.times) // r.rounds
    tokens = r.tokens_per_s_per_gpu * r.iter_time_s  # per GPU per iteration
    return [tokens / float(np.median(r.times[i * n:(i + 1) * n])) for i in range(r.rounds)]


def speedups(plans: List[Result], baselines: List[Result]) -> Dict[str, Dict]:
    """Each plan that ran against the fastest baseline that ran: the ratio of tokens/s/GPU over
    all rounds and round by round (rounds visit every configuration in turn, so a round's ratio
    compares runs minutes apart on the same machine)."""
    ok = [b for b in baselines if b.status == "ok"]
    if not ok:
        return {}
    best = max(ok, key=lambda b: b.tokens_per_s_per_gpu)
    out = {}
    for r in plans:
        if r.status == "ok":
            out[r.name] = {"over": best.name, "ratio": r.tokens_per_s_per_gpu / best.tokens_per_s_per_gpu,
                           "per_round": [a / b for a, b in zip(per_round(r), per_round(best))]}
    return out


def describe_speedups(found: Dict[str, Dict]) -> str:
    return "\n".join(f"{name}: {s['ratio']:.3f}x the fastest baseline ({s['over']})"
                     + (f", per round {', '.join(f'{x:.3f}' for x in s['per_round'])}" if len(s["per_round"]) > 1 else "")
                     for name, s in found.items())


def as_dict(r: Result) -> Dict:
    return asdict(r)
