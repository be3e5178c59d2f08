"""The strategies a layer (and the vocab modules) may take inside one pipeline stage."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

from megatron_galvatron.plan import ULYSSES, LayerStrategy, VocabStrategy
from megatron_galvatron.model.config import GPTConfig

SP_MODES = ("on", "off", "search")
ULYSSES_MODES = ("off", "search")


@dataclass(frozen=True)
class Space:
    """Restrictions of the search space (the run.py flags)."""

    max_tp: int = 8
    allow_zero3: bool = True
    allow_checkpoint: bool = True
    sequence_parallel: str = "search"  # on / off / search
    fp8: Optional[str] = None  # a float8 recipe each layer may take besides bf16 (plan.FP8_RECIPES)
    ulysses: str = "off"  # off / search: layers and vocab may also take Ulysses sequence parallelism


def divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tp_degrees(stage_world: int, model: GPTConfig, max_tp: int, for_layers: bool = True) -> List[int]:
    out = []
    for tp in divisors(stage_world):
        if tp > max_tp:
            continue
        if for_layers and (model.num_attention_heads % tp or model.num_query_groups % tp
                           or model.ffn_hidden_size % tp):
            continue
        out.append(tp)
    return out


def _sp_choices(tp: int, seq: int, mode: str) -> List[bool]:
    if tp == 1 or seq % tp:
        return [False]
    return {"on": [True], "off": [False], "search": [False, True]}[mode]


def _consec_choices(tp: int, stage_world: int) -> List[bool]:
    # tp == 1 and tp == stage_world give the same groups either way
    return [True, False] if 1 < tp < stage_world else [True]


def _dp_types(dp: int, space: Space) -> List[str]:
    if dp == 1:
        return ["ddp"]
    return ["ddp", "zero2", "zero3"] if space.allow_zero3 else ["ddp", "zero2"]


def layer_strategies(stage_world: int, global_micro_batch: int, model: GPTConfig, space: Space) -> List[LayerStrategy]:
    """Every strategy of a transformer layer in a stage of `stage_world` ranks fed `global_micro_batch` samples."""
    out = []
    ckpt = [False, True] if space.allow_checkpoint else [False]
    for tp in tp_degrees(stage_world, model, space.max_tp):
        dp = stage_world // tp
        if global_micro_batch % dp:
            continue
        for consec in _consec_choices(tp, stage_world):
            for sp in _sp_choices(tp, model.seq_length, space.sequence_parallel):
                for dp_type in _dp_types(dp, space):
                    for c in ckpt:
                        out.append(LayerStrategy(tp=tp, tp_consec=consec, dp_type=dp_type, sp=sp, checkpoint=c))
    for u, consec, dp_type in _ulysses_choices(stage_world, global_micro_batch, model, space, layers=True):
        out += [LayerStrategy(tp=u, tp_consec=consec, dp_type=dp_type, sp=ULYSSES, checkpoint=c) for c in ckpt]
    if space.fp8:  # appended: without --fp8 the bf16 strategies keep their indices and their DP
        out += [dataclasses.replace(s, fp8=space.fp8) for s in out]
    return out


def vocab_strategies(stage_world: int, global_micro_batch: int, model: GPTConfig, space: Space) -> List[VocabStrategy]:
    """Strategies of the embedding / LM head; their TP groups are consecutive ranks."""
    out = []
    for tp in tp_degrees(stage_world, model, space.max_tp, for_layers=False):
        dp = stage_world // tp
        if global_micro_batch % dp:
            continue
        for sp in _sp_choices(tp, model.seq_length, space.sequence_parallel):
            for dp_type in _dp_types(dp, space):
                out.append(VocabStrategy(tp=tp, tp_consec=True, dp_type=dp_type, sp=sp))
    for u, consec, dp_type in _ulysses_choices(stage_world, global_micro_batch, model, space, layers=False):
        out.append(VocabStrategy(tp=u, tp_consec=consec, dp_type=dp_type, sp=ULYSSES))
    return out


def _ulysses_choices(stage_world: int, global_micro_batch: int, model: GPTConfig, space: Space, layers: bool):
    """(group size, consecutive, dp_type) of every Ulysses strategy: the group splits the sequence
    (and, for a layer, the query heads; K/V heads are replicated as needed), the rest of the stage
    the micro-batch; parameters are replicated or sharded over the whole stage. Vocab groups are
    consecutive ranks, as its TP groups are."""
    if space.ulysses == "off":
        return []
    out = []
    for u in divisors(stage_world)[1:]:
        if model.seq_length % u or global_micro_batch % (stage_world // u):
            continue
        if layers and model.num_attention_heads % u:
            continue
        for consec in _consec_choices(u, stage_world) if layers else [True]:
            out += [(u, consec, dp_type) for dp_type in _dp_types(stage_world, space)]
    return out


def label(s) -> str:
    """Short name of a strategy, e.g. 'tp2s zero3 sp ckpt fp8 rowwise' (c = consecutive, s = strided TP
    group; no fp8 part: bf16)."""
    kind = "ulysses" if s.ulysses else "tp"
    parts = [f"{kind}{s.tp}" + ("" if s.tp == 1 else ("c" if s.tp_consec else "s")), s.dp_type]
    if s.sp is True:
        parts.append("sp")
    if getattr(s, "checkpoint", False):
        parts.append("ckpt")
    if getattr(s, "fp8", None):
        parts.append(f"fp8 {s.fp8}")
    return " ".join(parts)
