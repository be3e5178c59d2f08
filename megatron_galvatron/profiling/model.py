"""Per-layer time and memory of one model on one device -> model.json.

Each TP degree (and sequence parallelism) is measured on the real TransformerLayer and
VocabModule built with the shard shapes of TP rank 0 (profiling/shards.py). With bf16 each is
measured twice: on bf16 parameters and a bf16 input without autocast (the "bf16" tables), which
is how the runtime computes every unit (an FSDP unit on its gathered bf16 weights, a replicated
one on a bf16 copy of its fp32 masters), and on fp32 parameters under bf16 autocast (the plain
tables, which the format requires: they are what an fp32 profile holds, and what the cost model
falls back on for a profile without bf16 tables). Without bf16 (CPU default) plain fp32 only.
Each recipe of ``settings.fp8`` is measured as a third set of layer tables ('layer.fp8.<recipe>'):
the bf16 layer with its TP linears given float8 matmuls by the runtime's own builder step
(model/parallelize.py: apply_fp8), on bf16 weights as the runtime runs every unit.
"""
import dataclasses
from contextlib import nullcontext
from functools import partial
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from megatron_galvatron.errors import UserError
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.model.activation_checkpoint import checkpoint_module, checkpointed
from megatron_galvatron.model.init import init_params_
from megatron_galvatron.model.param_facts import param_facts
from megatron_galvatron.model.parallelize import apply_fp8
from megatron_galvatron.model.stage import Unit
from megatron_galvatron.model.transformer_layer import TransformerLayer
from megatron_galvatron.model.vocab import VocabModule
from megatron_galvatron.plan import LayerStrategy
from megatron_galvatron.profile_format import MODEL_SCHEMA
from megatron_galvatron.profiling.dynamo import allow_recompiles, static_shapes
from megatron_galvatron.profiling.fit import bytes_per_token, seq_bytes_entry, seq_time_entry, time_entry
from megatron_galvatron.profiling.hardware import (
    HostAhead,
    Stopwatch,
    command_line,
    describe,
    host_seconds,
    median,
    synchronize,
    time_repeated,
)
from megatron_galvatron.profiling.memory import allocator_stats, saved_bytes
from megatron_galvatron.profiling.model_settings import DTYPES, ModelSettings
from megatron_galvatron.profiling.report import sequence_summary
from megatron_galvatron.profiling.shards import ShardGroups
from megatron_galvatron.profiling.sustained import measure_sustained
from megatron_galvatron.progress import Progress
from megatron_galvatron.training.optimizer import build_optimizer


def valid_tp_degrees(cfg: GPTConfig, wanted: List[int]) -> List[int]:
    """The degrees whose shards the model allows (heads, KV groups and FFN all split evenly)."""
    ok = [t for t in wanted if t >= 1 and cfg.num_attention_heads % t == 0 and cfg.num_query_groups % t == 0
          and cfg.ffn_hidden_size % t == 0]
    return sorted(set(ok) | {1})


def _points(settings: ModelSettings, tp: int, sp: bool) -> List[Tuple[int, int]]:
    return [(mb, s) for s in settings.seq_lengths for mb in settings.micro_batch_sizes
            if not sp or s % tp == 0]


class ModelProfiler:
    def __init__(self, cfg: GPTConfig, device: torch.device, settings: ModelSettings):
        self.device, self.s = device, settings
        if settings.dtype not in DTYPES:
            raise UserError(f"--dtype {settings.dtype!r}: use one of {', '.join(DTYPES)}")
        # Positions up to the longest profiled sequence; the recorded config stays the user's.
        self.user_cfg = cfg
        self.cfg = dataclasses.replace(cfg, max_position_embeddings=max([cfg.max_position_embeddings]
                                                                        + settings.seq_lengths))
        self.tps = valid_tp_degrees(cfg, settings.tp_degrees)
        skipped = sorted(set(settings.tp_degrees) - set(self.tps))
        self.notes: List[str] = [f"tp {skipped} skipped: they do not divide the heads, KV groups and FFN size"] \
            if skipped else []
        self.bf16 = settings.dtype == "bf16"
        self.ahead = HostAhead(device)
        self.param_dtype = torch.float32

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    # ---------------------------------------------------------------- building blocks
    def _init(self, module: nn.Module, groups) -> nn.Module:
        init_params_(module, param_facts(module, groups.tp_rank, groups.tp), self.cfg.init_std,
                     self.cfg.num_layers, self.s.seed)
        return module

    def layer(self, shards: ShardGroups, tp: int, sp: bool, checkpoint: bool = False,
              fp8: Optional[str] = None) -> TransformerLayer:
        g = shards.layer_groups(tp, sp)
        layer = self._init(TransformerLayer(self.cfg, g, g.layout.sp, self.s.seed, self.device), g)
        if fp8:
            apply_fp8([Unit("layer", layer, LayerStrategy(tp=tp, sp=g.layout.sp, fp8=fp8), g)], self.device)
        if checkpoint:
            checkpoint_module(layer, layer.tracker.generator)
        return layer

    def vocab(self, shards: ShardGroups, tp: int) -> VocabModule:
        g = shards.layer_groups(tp, False)
        return self._init(VocabModule(self.cfg, g, False, True, True, self.s.seed, self.device), g)

    def hidden(self, seq: int, mb: int, requires_grad: bool = True, dtype=None) -> torch.Tensor:
        return torch.randn(seq, mb, self.cfg.hidden_size, device=self.device, dtype=dtype or self.param_dtype,
                           requires_grad=requires_grad)

    def _mode(self, bf16_weights: bool):
        """(input dtype, autocast context factory) on bf16 weights, or on fp32 ones under autocast."""
        if bf16_weights:
            return torch.bfloat16, nullcontext
        return self.param_dtype, self.autocast

    def tokens(self, seq: int, mb: int) -> torch.Tensor:
        return torch.randint(0, self.cfg.vocab_size, (seq, mb), device=self.device)

    # ---------------------------------------------------------------- timing
    def _fwd_bwd(self, forward: Callable[[], torch.Tensor], autocast=None) -> Tuple[float, float]:
        """Median forward and backward seconds; gradients accumulate across repeats as over micro-batches.

        Repeats run back to back (one synchronisation at the end) after ``soak_seconds`` of
        untimed repeats: a training step keeps the GPU busy, and a busy H100/H200 meets its
        power cap and lowers its clock, so short isolated bursts would time it faster than a
        step runs it."""
        warmup = max(1, self.s.warmup)  # the first call compiles, autotunes and allocates
        host_f = host_b = 0.0
        timed = []

        def once(watch: bool):
            nonlocal host_f, host_b
            sf, sb = Stopwatch(self.device), Stopwatch(self.device)
            self.ahead.hold(2 * host_f + 5e-4)
            with (autocast or self.autocast)():
                sf.start()
                host_f, y = host_seconds(forward)
                sf.stop()
            grad = torch.ones_like(y)
            self.ahead.hold(2 * host_b + 5e-4)
            sb.start()
            host_b, _ = host_seconds(partial(y.backward, grad))
            sb.stop()
            if watch:
                timed.append((sf, sb))
            return sf, sb

        for _ in range(warmup):
            sf, sb = once(False)
        synchronize(self.device)
        if self.s.soak_seconds > 0 and self.device.type == "cuda":
            # Bounded by the host's clock: small points are launch-bound and would otherwise
            # repeat thousands of times for a soak that loads the GPU no more.
            end = time.perf_counter() + self.s.soak_seconds
            while time.perf_counter() < end:
                once(False)
        for _ in range(self.s.iters):
            once(True)
        synchronize(self.device)
        return median([f.seconds() for f, _ in timed]), median([b.seconds() for _, b in timed])

    def _sweep(self, tp: int, sp: bool, build: Callable[[], nn.Module],
               measure: Callable[[nn.Module, int, int], List[float]], bar) -> Dict[Tuple[int, int], List[float]]:
        """measure(module, mb, seq) at every point; points that run out of GPU memory are dropped."""
        module = build()
        out = {}
        for mb, seq in _points(self.s, tp, sp):
            try:
                out[(mb, seq)] = measure(module, mb, seq)
            except torch.OutOfMemoryError:
                self.notes.append(f"tp{tp}{'_sp' if sp else ''} micro-batch {mb} x seq {seq}: out of memory, "
                                  f"point dropped")
                torch.cuda.empty_cache()
            bar.update(1)
        del module
        return out

    def _layer_point(self, layer: TransformerLayer, tp: int, sp: bool, mb: int, seq: int,
                     bf16_weights: bool = False) -> List[float]:
        dtype, autocast = self._mode(bf16_weights)
        x = self.hidden(seq // tp if sp else seq, mb, dtype=dtype)
        fwd, bwd = self._fwd_bwd(lambda: layer(x), autocast)
        # A checkpointed layer's backward recomputes the forward first, stopping where the last
        # saved tensor is back: timed as it runs, since its share of the forward's time depends
        # on how fast each part's kernels are, not only on its multiply-adds.
        with checkpointed(layer, layer.tracker.generator):
            _, bwd_ckpt = self._fwd_bwd(lambda: layer(x), autocast)
        layer.zero_grad(set_to_none=True)
        # A compiled layer saves what inductor's partition of forward and backward keeps (it
        # recomputes cheap elementwise results instead), so it is counted through the compiled
        # call, the one just timed; the pack hook sees those tensors as it does eager ones.
        mem = list(saved_bytes(layer, lambda: layer(x), autocast))
        # Checkpointed, a layer keeps its input whatever runs inside: counted on forward(), the
        # eager call, which is what every checkpointed profile so far has counted.
        with checkpointed(layer, layer.tracker.generator):
            mem += list(saved_bytes(layer, lambda: layer.forward(x), autocast))
        return [fwd, bwd] + mem + [bwd_ckpt]

    def _vocab_point(self, vocab: VocabModule, mb: int, seq: int) -> List[float]:
        tokens, labels = self.tokens(seq, mb), self.tokens(seq, mb)
        x = self.hidden(seq, mb)
        head_f, head_b = self._fwd_bwd(lambda: vocab.head(x, labels))
        emb_f, emb_b = self._fwd_bwd(lambda: vocab.embed(tokens))
        vocab.zero_grad(set_to_none=True)
        head_mem, head_alloc = saved_bytes(vocab, lambda: vocab.head(x, labels), self.autocast)
        emb_mem, _ = saved_bytes(vocab, lambda: vocab.embed(tokens), self.autocast)
        return [head_f, head_b, emb_f, emb_b, head_mem, emb_mem, head_alloc]

    def _bf16_vocab_point(self, vocab: VocabModule, mb: int, seq: int) -> List[float]:
        labels = self.tokens(seq, mb)
        x = self.hidden(seq, mb, dtype=torch.bfloat16)
        fwd, bwd = self._fwd_bwd(lambda: vocab.head(x, labels), nullcontext)
        vocab.zero_grad(set_to_none=True)
        mem, _ = saved_bytes(vocab, lambda: vocab.head(x, labels), nullcontext)
        return [fwd, bwd, mem]

    def _bf16(self, module: nn.Module) -> nn.Module:
        return module.to(torch.bfloat16)

    def _timed_layer(self, layer: nn.Module) -> nn.Module:
        if self.s.compile:
            layer.compile()
        return layer

    # ---------------------------------------------------------------- the whole profile
    def layer_profile(self, shards: ShardGroups, bar) -> Dict:
        times, act, ckpt, const, points, recompute, seq_act = self._layer_tables(shards, bar, bf16_weights=False)
        shard_counts = {f"tp{tp}": sum(p.numel() for p in self.layer(shards, tp, False).parameters())
                        for tp in self.tps}
        out = {"time": times, "recompute_fraction": recompute,
               "memory": {"param_count": shard_counts["tp1"], "param_count_per_shard": shard_counts,
                          "activation_bytes_per_token": act, "checkpoint_bytes_per_token": ckpt,
                          # kept per micro-batch in flight whatever its size: under bf16 autocast,
                          # the bf16 copies of the weights the matmuls save for backward
                          "activation_constant_bytes": const,
                          "points": points, **({"activation_seq_fit": seq_act} if seq_act else {})}}
        if self.bf16:
            out["bf16"] = self._bf16_layer_profile(shards, bar)
        if self.s.fp8:
            out["fp8"] = {recipe: self._bf16_layer_profile(shards, bar, recipe) for recipe in self.s.fp8}
        return out

    def _bf16_layer_profile(self, shards: ShardGroups, bar, fp8: Optional[str] = None) -> Dict:
        """The layer on bf16 weights without autocast, as the runtime runs it (see the module doc);
        with `fp8`, its linears in float8 with that recipe."""
        times, act, ckpt, const, points, recompute, seq_act = self._layer_tables(shards, bar, True, fp8)
        out = {"time": times, "recompute_fraction": recompute, "activation_bytes_per_token": act,
               "checkpoint_bytes_per_token": ckpt, "points": points,
               **({"activation_seq_fit": seq_act} if seq_act else {})}
        if fp8:  # tensorwise saves the float8 cast of each weight, once per micro-batch
            out["activation_constant_bytes"] = const
        return out

    def _layer_tables(self, shards: ShardGroups, bar, bf16_weights: bool, fp8: Optional[str] = None):
        """Per layout key: time fits, activation / checkpoint bytes per token, constant bytes and
        the points, over every micro-batch x sequence point of every tp (and sp) degree; over two or more
        lengths also the fits in sequence length ('seq_fit' in each time entry; activation ones last)."""
        times, act, ckpt, const, points, recompute, seq_act = {}, {}, {}, {}, {}, {}, {}
        for tp in self.tps:
            for sp in ((False, True) if tp > 1 and self.s.sequence_parallel else (False,)):
                key = f"tp{tp}{'_sp' if sp else ''}"
                plain = partial(self.layer, shards, tp, sp, fp8=fp8)
                build = (lambda b=plain: self._timed_layer(self._bf16(b()) if bf16_weights else b()))
                res = self._sweep(tp, sp, build,
                                  lambda m, mb, seq, tp=tp, sp=sp: self._layer_point(m, tp, sp, mb, seq, bf16_weights),
                                  bar)
                if not res:
                    if tp == 1 and not bf16_weights:
                        raise UserError("no micro-batch size fits in GPU memory at tp 1: lower "
                                        "--micro-batch-sizes or --seq-lengths")
                    continue
                pts = sorted(res.items())
                times[key] = {"fwd": time_entry([[mb, s, r[0]] for (mb, s), r in pts]),
                              "bwd": time_entry([[mb, s, r[1]] for (mb, s), r in pts]),
                              "bwd_checkpointed": time_entry([[mb, s, r[6]] for (mb, s), r in pts])}
                # (checkpointed backward - backward) / forward, median over the points
                recompute[key] = median([max(0.0, (r[6] - r[1]) / r[0]) for _, r in pts])
                if len({s for (_, s), _ in pts}) >= 2:
                    for name, col in (("fwd", 0), ("bwd", 1), ("bwd_checkpointed", 6)):
                        times[key][name]["seq_fit"] = seq_time_entry([[mb, s, r[col]] for (mb, s), r in pts])
                    seq_act[key] = seq_bytes_entry([[mb, s, r[2]] for (mb, s), r in pts])
                act[key], const[key] = bytes_per_token([[mb, s, r[2]] for (mb, s), r in pts])
                ckpt[key], _ = bytes_per_token([[mb, s, r[4]] for (mb, s), r in pts])
                points[key] = {"saved_bytes": [[mb, s, r[2]] for (mb, s), r in pts],
                               "checkpoint_saved_bytes": [[mb, s, r[4]] for (mb, s), r in pts]}
                if self.device.type == "cuda" and not bf16_weights:
                    points[key]["cuda_allocated_delta"] = [[mb, s, r[3]] for (mb, s), r in pts]
                    points[key]["checkpoint_cuda_allocated_delta"] = [[mb, s, r[5]] for (mb, s), r in pts]
        return times, act, ckpt, const, points, recompute, seq_act

    def vocab_profile(self, shards: ShardGroups, bar) -> Dict:
        times, emb_times, act, const, emb_act, points = {}, {}, {}, {}, {}, {}
        for tp in self.tps:
            key = f"tp{tp}"
            res = self._sweep(tp, False, partial(self.vocab, shards, tp),
                              lambda m, mb, seq: self._vocab_point(m, mb, seq), bar)
            if not res:
                if tp == 1:
                    raise UserError("the LM head does not fit in GPU memory at tp 1 for any micro-batch size: "
                                    "lower --micro-batch-sizes")
                continue
            pts = sorted(res.items())
            times[key] = {"fwd": time_entry([[mb, s, r[0]] for (mb, s), r in pts]),
                          "bwd": time_entry([[mb, s, r[1]] for (mb, s), r in pts])}
            emb_times[key] = {"fwd": time_entry([[mb, s, r[2]] for (mb, s), r in pts]),
                              "bwd": time_entry([[mb, s, r[3]] for (mb, s), r in pts])}
            act[key], const[key] = bytes_per_token([[mb, s, r[4]] for (mb, s), r in pts])
            emb_act[key], _ = bytes_per_token([[mb, s, r[5]] for (mb, s), r in pts])
            points[key] = {"saved_bytes": [[mb, s, r[4]] for (mb, s), r in pts],
                           "embedding_saved_bytes": [[mb, s, r[5]] for (mb, s), r in pts]}
            if self.device.type == "cuda":
                points[key]["cuda_allocated_delta"] = [[mb, s, r[6]] for (mb, s), r in pts]
        v = self.vocab(shards, 1)
        padded = v.padded_vocab * self.cfg.hidden_size
        del v
        out = {"param_count": self.cfg.vocab_size * self.cfg.hidden_size, "padded_param_count": padded,
               "time": times, "activation_bytes_per_token": act, "activation_constant_bytes": const,
               "embedding_time": emb_times, "embedding_activation_bytes_per_token": emb_act,
               "memory_points": points}
        if self.bf16:
            out["bf16"] = self._bf16_vocab_profile(shards, bar)
        return out

    def _bf16_vocab_profile(self, shards: ShardGroups, bar) -> Dict:
        """Final norm + LM head + loss on bf16 weights without autocast (see the module doc)."""
        times, act, points = {}, {}, {}
        for tp in self.tps:
            key = f"tp{tp}"
            res = self._sweep(tp, False, lambda tp=tp: self._bf16(self.vocab(shards, tp)),
                              lambda m, mb, seq: self._bf16_vocab_point(m, mb, seq), bar)
            if not res:
                continue
            pts = sorted(res.items())
            times[key] = {"fwd": time_entry([[mb, s, r[0]] for (mb, s), r in pts]),
                          "bwd": time_entry([[mb, s, r[1]] for (mb, s), r in pts])}
            act[key], _ = bytes_per_token([[mb, s, r[2]] for (mb, s), r in pts])
            points[key] = {"saved_bytes": [[mb, s, r[2]] for (mb, s), r in pts]}
        return {"time": times, "activation_bytes_per_token": act, "points": points}

    def optimizer_profile(self) -> Dict:
        """AdamW step (fused on CUDA, foreach on CPU, as training builds it) over flat fp32 tensors."""
        pts = []
        n_total = self.s.optimizer_params
        for n in (n_total // 4, n_total // 2, n_total):
            chunks = 8
            per = max(1, n // chunks)
            params = nn.ParameterList([nn.Parameter(torch.zeros(per, 1, device=self.device))
                                       for _ in range(chunks)])
            for p in params:
                p.grad = torch.randn_like(p)
            opt = build_optimizer(params, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.95), eps=1e-8)
            t = time_repeated(opt.step, self.device, max(1, self.s.warmup), max(3, self.s.iters), self.ahead)
            pts.append([per * chunks, t])
            del opt, params
        return {"step_s_per_param": pts[-1][1] / pts[-1][0], "points": pts,
                "method": "median AdamW step over fp32 parameters (fused on CUDA), largest size's time / params"}

    def sustained_profile(self, shards: ShardGroups, layer: Dict) -> Dict:
        """How much slower layers run inside a long step than alone: a chain of layers is run
        forward and backward back to back for ``sustained_seconds`` (as a step keeps the GPU
        busy, so the card meets its power cap and lowers its clock) and its last repeats are
        compared with the same chain summed from the per-layer points. The cost model scales
        compute times by the ratio. Float8 layers draw a different power per second of work, so
        each recipe gets a chain of its own ('sustained.fp8.<recipe>'), its tables its own ratio."""
        if self.device.type != "cuda" or self.s.sustained_seconds <= 0:
            return {"slowdown": 1.0, "note": "not measured" + (" on cpu" if self.device.type != "cuda" else "")}
        bf16_weights = self.bf16 and "tp1" in layer.get("bf16", {}).get("time", {})
        table = layer["bf16"]["time"]["tp1"] if bf16_weights else layer["time"]["tp1"]
        out = self._sustained_chain(shards, table, bf16_weights, None, self.s.sustained_duty)
        fp8 = {recipe: self._sustained_chain(shards, tables["time"]["tp1"], True, recipe, ())
               for recipe, tables in layer.get("fp8", {}).items() if "tp1" in tables.get("time", {})}
        if fp8:
            out["fp8"] = fp8
        return out

    def _sustained_chain(self, shards: ShardGroups, table: Dict, bf16_weights: bool, fp8: Optional[str],
                         duties) -> Dict:
        pts = {(mb, s): t for mb, s, t in table["fwd"]["points"]}
        bpts = {(mb, s): t for mb, s, t in table["bwd"]["points"]}
        mb, seq = max(pts)  # the largest point that fit
        n = 4

        def build():
            lyr = self.layer(shards, 1, False, fp8=fp8)
            return self._timed_layer(self._bf16(lyr) if bf16_weights else lyr)

        layers = [build() for _ in range(n)]
        dtype, autocast = self._mode(bf16_weights)
        x = self.hidden(seq, mb, dtype=dtype)

        def chain():
            with autocast():
                y = x
                for lyr in layers:
                    y = lyr(y)
            y.backward(torch.ones_like(y))

        alone = n * (pts[(mb, seq)] + bpts[(mb, seq)])
        out = measure_sustained(chain, self.device, self.s.sustained_seconds, duties, alone)
        del layers, x
        torch.cuda.empty_cache()
        what = f" with float8 {fp8} linears" if fp8 else ""
        out["method"] = (f"{n} tp1 layers{' on bf16 weights' if bf16_weights else ''}{what}, micro-batch {mb} x "
                         f"seq {seq}, forward + backward back to back for {self.s.sustained_seconds:g} s; median of "
                         f"the last half vs {n} x the point's fwd + bwd"
                         + ("; 'duty': the same at each duty cycle, the GPU idle between repeats (the host "
                            "waits, then sleeps), [duty it had, slowdown]" if "duty" in out else ""))
        return out

    def allocator_profile(self, shards: ShardGroups) -> Dict:
        """Peak reserved / peak allocated over a training-like step (two layers, LM head, optimizer)."""
        if self.device.type != "cuda":
            return {"reserved_over_allocated": 1.0, "fixed_overhead_bytes": 0.0, "note": "not measured on cpu"}
        tp = max(self.tps)
        for mb in sorted(self.s.micro_batch_sizes, reverse=True):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                stats = self._training_like_step(shards, tp, mb)
                break
            except torch.OutOfMemoryError:
                continue
        else:
            return {"reserved_over_allocated": 1.0, "fixed_overhead_bytes": 0.0,
                    "note": "the training-like step did not fit at any micro-batch size; not measured"}
        ratio = max(1.0, stats["max_reserved"] / max(1, stats["max_allocated"]))
        fixed = max(0.0, float(stats["device_used"] - stats["reserved"]))
        return {"reserved_over_allocated": ratio, "fixed_overhead_bytes": fixed, "stats": stats,
                "method": f"two tp{tp} layers + LM head, micro-batch {mb}, AdamW step; fixed = GPU memory in use "
                          f"outside the caching allocator (CUDA context, library workspaces; not NCCL buffers)"}

    def _training_like_step(self, shards: ShardGroups, tp: int, mb: int) -> Dict:
        seq = max(self.s.seq_lengths)
        layers = nn.ModuleList([self.layer(shards, tp, False) for _ in range(2)])
        vocab = self.vocab(shards, tp)
        model = nn.ModuleList([layers, vocab])
        opt = build_optimizer(model, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.95), eps=1e-8)
        tokens, labels = self.tokens(seq, mb), self.tokens(seq, mb)
        for _ in range(2):
            with self.autocast():
                x = vocab.embed(tokens)
                for layer in layers:
                    x = layer(x)
                loss = vocab.head(x, labels).float().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize(self.device)
        return allocator_stats(self.device)

    def run(self) -> Dict:
        shards = ShardGroups(max(self.tps))
        n_layer = sum(len(_points(self.s, tp, sp)) for tp in self.tps
                      for sp in ((False, True) if tp > 1 and self.s.sequence_parallel else (False,)))
        n_vocab = sum(len(_points(self.s, tp, False)) for tp in self.tps)
        copies = 2 if self.bf16 else 1  # with bf16, every point again on bf16 weights; fp8 layers once per recipe
        n_layer, n_vocab = (copies + len(self.s.fp8)) * n_layer, copies * n_vocab
        allow_recompiles(4 * (n_layer + n_vocab) + 8 + 4 * len(self.s.fp8))
        static = static_shapes() if self.s.compile else nullcontext()
        prev_flush = torch.set_flush_denormal(True) if self.device.type == "cpu" else None
        try:
            with static, Progress(n_layer + n_vocab + 2, "profile_model", unit="pt", enabled=self.s.progress) as bar:
                layer = self.layer_profile(shards, bar)
                vocab = self.vocab_profile(shards, bar)
                sustained = self.sustained_profile(shards, layer)
                optimizer = self.optimizer_profile()
                bar.update(1)
                allocator = self.allocator_profile(shards)
                bar.update(1)
        finally:
            shards.close()
            if prev_flush is not None:
                torch.set_flush_denormal(False)
        return {
            "schema": MODEL_SCHEMA,
            "model": dataclasses.asdict(self.user_cfg),
            "dtype": self.s.dtype,
            "compiled": self.s.compile,
            "hardware": describe(self.device, 1, 1),
            "command": command_line(),
            "settings": {"micro_batch_sizes": self.s.micro_batch_sizes, "seq_lengths": self.s.seq_lengths,
                         "tp_degrees": self.tps, "sequence_parallel": self.s.sequence_parallel,
                         "warmup": self.s.warmup, "iters": self.s.iters, "soak_seconds": self.s.soak_seconds,
                         "compile": self.s.compile, "fp8": list(self.s.fp8),
                         "time_method": "median of per-call CUDA events (wall clock on CPU), fwd and bwd apart",
                         "memory_method": "unique storages saved for backward (saved_tensors_hooks), "
                                          "parameters excluded; per token = slope over the token count"},
            "layer": layer,
            "vocab": vocab,
            "optimizer": optimizer,
            "allocator": allocator,
            "sustained": sustained,
            **({"sequence": sequence_summary(layer, self.s.seq_lengths)} if len(self.s.seq_lengths) >= 2 else {}),
            "notes": self.notes,
        }

