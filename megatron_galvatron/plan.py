"""The plan: the one object that flows from search to runtime to checkpoints.

A plan says, for one training job, how the world is split into pipeline stages and how every
transformer layer (and the embedding / LM head) is parallelised inside its stage. The search
writes it, the runtime builds the model from it, the cost model prices it and checkpoints
record it. Native form is JSON (``format: megatron_galvatron.plan/1``); Hetu-Galvatron's
comma-separated config files and the GLOBAL-mode flags are imported into the same object.

Every user-facing problem raises :class:`PlanError` with a one-line message naming the field
and the fix; CLIs print it without a traceback.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

from megatron_galvatron.errors import UserError
from megatron_galvatron.json_file import check, read_object
from megatron_galvatron.micro_batches import batch_unit, micro_batch_sizes
from megatron_galvatron.output_paths import remove_quietly

if TYPE_CHECKING:  # the model description is only read here, never built
    from megatron_galvatron.model.config import GPTConfig

FORMAT = "megatron_galvatron.plan/1"
DP_TYPES = ("ddp", "zero2", "zero3")
FP8_RECIPES = ("tensorwise", "rowwise")  # torchao.float8 recipes; a layer without one runs in bf16
PIPELINE_TYPES = ("gpipe", "1f1b")
ULYSSES = "ulysses"  # a strategy's sp value for all-to-all (DeepSpeed-Ulysses) sequence parallelism
# Beyond these a plan describes no real job; a global batch of 10**15 would only hang building it.
MAX_WORLD_SIZE = 2 ** 20
MAX_GLOBAL_BSZ = 2 ** 24


class PlanError(UserError, ValueError):
    """A plan (or the flags that make one) is invalid; the message says what to fix."""


@dataclass(frozen=True)
class LayerStrategy:
    """How one transformer layer runs inside its pipeline stage.

    tp: tensor-parallel degree; dp = stage_world // tp.
    tp_consec: TP groups are consecutive ranks ([0,1],[2,3]) rather than strided ([0,2],[1,3]).
    dp_type: "ddp" (replicated params, gradients all-reduced), "zero2" (gradients and
        optimizer state sharded), "zero3" (parameters sharded too; Galvatron's SDP).
    sp: False, True (Megatron sequence parallelism inside the TP group) or "ulysses": the
        sequence is split over a group of ``tp`` ranks that hold whole (unsharded) parameters
        and swap to head sharding for attention by all-to-all; such a layer has no TP, and its
        parameters are replicated (ddp) or sharded (zero2/zero3) over the whole stage.
        A truthy sp means the activation is sequence-sharded over the group either way.
    checkpoint: recompute this layer's activations in backward.
    fp8: the layer's linears compute in float8 with this scaling recipe (one of FP8_RECIPES);
        None: in the training precision (bf16).
    """

    tp: int = 1
    tp_consec: bool = True
    dp_type: str = "ddp"
    sp: Union[bool, str] = False
    checkpoint: bool = False
    fp8: Optional[str] = None

    @property
    def ulysses(self) -> bool:
        return self.sp == ULYSSES and self.tp > 1


@dataclass(frozen=True)
class VocabStrategy:
    """Strategy of the embedding and the LM head (same degree on first and last stage)."""

    tp: int = 1
    tp_consec: bool = True
    dp_type: str = "ddp"
    sp: Union[bool, str] = False  # as LayerStrategy.sp

    @property
    def ulysses(self) -> bool:
        return self.sp == ULYSSES and self.tp > 1

    def as_layer(self) -> LayerStrategy:
        """The activation layout the vocab modules produce / consume, as a layer strategy."""
        return LayerStrategy(tp=self.tp, tp_consec=self.tp_consec, dp_type=self.dp_type, sp=self.sp)


@dataclass
class Plan:
    world_size: int
    pp_deg: int
    pp_division: List[int]
    global_bsz: int
    chunks: int
    layers: List[LayerStrategy]
    vocab: VocabStrategy = field(default_factory=VocabStrategy)
    pipeline_type: str = "1f1b"
    predicted: Dict[str, Any] = field(default_factory=dict)
    # torch.compile every transformer layer (the search sets it when the profile timed compiled layers)
    compile: bool = False
    # the cluster shape the plan was searched for (nodes x gpus_per_node = world_size); None:
    # any (plans written before the search recorded it, GLOBAL mode)
    gpus_per_node: Optional[int] = None

    @property
    def nodes(self) -> Optional[int]:
        return None if self.gpus_per_node is None else self.world_size // self.gpus_per_node

    # ---------------------------------------------------------------- derived facts
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def stage_world(self) -> int:
        return self.world_size // self.pp_deg

    def stage_of_layer(self, layer_idx: int) -> int:
        end = 0
        for stage, n in enumerate(self.pp_division):
            end += n
            if layer_idx < end:
                return stage
        raise IndexError(layer_idx)

    def stage_layers(self, stage: int) -> range:
        start = sum(self.pp_division[:stage])
        return range(start, start + self.pp_division[stage])

    @property
    def has_fp8(self) -> bool:
        return any(s.fp8 for s in self.layers)

    @property
    def batch_unit(self) -> int:
        """Micro-batches are cut in multiples of this: every layer's and the vocab's DP degree divides it."""
        return batch_unit(self.stage_world // s.tp for s in [self.vocab, *self.layers])

    @property
    def micro_batch_sizes(self) -> List[int]:
        """Samples of each global micro-batch of a step, cut as torch.chunk cuts (see micro_batches):
        `chunks` equal ones when chunks divides the batch evenly, else ceil-sized ones, the last smaller."""
        return micro_batch_sizes(self.global_bsz, self.chunks, self.batch_unit)

    @property
    def num_micro_batches(self) -> int:
        return len(self.micro_batch_sizes)

    @property
    def global_micro_batch_size(self) -> int:
        """Samples in the largest micro-batch over all data-parallel ranks of a stage; a layer's DP
        rank gets global_micro_batch_size / dp of them (its micro-batch size in Megatron's sense)."""
        return self.micro_batch_sizes[0]

    # ---------------------------------------------------------------- validation
    def validate(self, model: Optional["GPTConfig"] = None, world_size: Optional[int] = None,
                 gpus_per_node: Optional[int] = None) -> "Plan":
        """Check the plan on its own, against the model it will train and the launch's world size
        and processes per node (torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE)."""
        _check_int("world_size", self.world_size, 1, MAX_WORLD_SIZE)
        _check_int("pp_deg", self.pp_deg, 1, self.world_size)
        _check_int("global_bsz", self.global_bsz, 1, MAX_GLOBAL_BSZ)
        _check_int("chunks", self.chunks, 1, self.global_bsz)
        if world_size is not None and world_size != self.world_size:
            raise PlanError(
                f"plan world_size={self.world_size} but the job was launched with {world_size} processes: "
                f"launch with --nproc-per-node x nodes = {self.world_size} or search a plan for {world_size} GPUs"
            )
        if self.gpus_per_node is not None:
            _check_int("gpus_per_node", self.gpus_per_node, 1, self.world_size)
            if self.world_size % self.gpus_per_node:
                raise PlanError(f"gpus_per_node={self.gpus_per_node} does not divide world_size={self.world_size}: "
                                f"fix it or remove it")
            if gpus_per_node is not None and gpus_per_node != self.gpus_per_node:
                raise PlanError(
                    f"plan searched for {self.nodes} node(s) x {self.gpus_per_node} GPUs but launched with "
                    f"{gpus_per_node} processes per node: launch with --nproc-per-node {self.gpus_per_node} on "
                    f"{self.nodes} node(s), or search a plan with --num-nodes {self.world_size // gpus_per_node}")
        if self.world_size % self.pp_deg:
            raise PlanError(f"pp_deg={self.pp_deg} does not divide world_size={self.world_size}: "
                            f"use a pp_deg that divides {self.world_size}")
        if self.pipeline_type not in PIPELINE_TYPES:
            raise PlanError(f"pipeline_type={self.pipeline_type!r}: use one of {', '.join(PIPELINE_TYPES)}")
        if not isinstance(self.pp_division, list) or len(self.pp_division) != self.pp_deg:
            raise PlanError(f"pp_division={self.pp_division} must list {self.pp_deg} stage sizes: "
                            f"give one layer count per pipeline stage")
        for n in self.pp_division:
            _check_int("pp_division entry", n, 1, len(self.layers))
        if sum(self.pp_division) != len(self.layers):
            raise PlanError(
                f"pp_division={self.pp_division} sums to {sum(self.pp_division)} but the plan has "
                f"{len(self.layers)} layers: make the stage sizes add up to the layer count"
            )
        if model is not None and len(self.layers) != model.num_layers:
            raise PlanError(
                f"plan has {len(self.layers)} layers but --num-layers is {model.num_layers}: "
                f"search a plan for this model or fix --num-layers"
            )
        sw = self.stage_world
        for i, s in enumerate(self.layers):
            _check_strategy(f"layers[{i}]", s, sw, model)
        _check_strategy("vocab", self.vocab, sw, None)
        # Every layer's (and the vocab's) DP degree must split every micro-batch evenly.
        unit = self.batch_unit
        if self.global_bsz % unit:
            dps = sorted({sw // s.tp for s in [self.vocab, *self.layers]})
            raise PlanError(f"global_bsz={self.global_bsz} (chunks={self.chunks}) cannot be cut into micro-batches that "
                            f"the data-parallel degrees {dps} all split: make global_bsz a multiple of {unit}")
        if model is not None:
            for name, s in [(f"layers[{i}]", s) for i, s in enumerate(self.layers)] + [("vocab", self.vocab)]:
                if s.sp and model.seq_length % s.tp:
                    raise PlanError(f"{name} uses sequence parallelism with tp={s.tp}, which does not divide "
                                    f"--seq-length {model.seq_length}: turn sp off or use a tp that divides it")
        return self

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "world_size": self.world_size,
            "pp_deg": self.pp_deg,
            "pp_division": list(self.pp_division),
            "pipeline_type": self.pipeline_type,
            "global_bsz": self.global_bsz,
            "chunks": self.chunks,
            "layers": [_strategy_dict(s) for s in self.layers],
            "vocab": dataclasses.asdict(self.vocab),
            **({"compile": True} if self.compile else {}),
            **({"nodes": self.nodes, "gpus_per_node": self.gpus_per_node} if self.gpus_per_node else {}),
            "predicted": dict(self.predicted),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Plan":
        if not isinstance(d, dict):
            raise PlanError("a plan must be a JSON object")
        if "format" not in d and "tp_sizes_enc" in d:
            return from_galvatron_dict(d)
        if d.get("format") != FORMAT:
            raise PlanError(f"plan format {d.get('format')!r} is not {FORMAT!r}: re-run search/run.py or fix 'format'")
        known = {"format", "world_size", "pp_deg", "pp_division", "pipeline_type", "global_bsz", "chunks",
                 "layers", "vocab", "predicted", "compile", "nodes", "gpus_per_node"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PlanError(f"unknown plan key(s) {unknown}: remove them (known keys: {sorted(known)})")
        for k in ("world_size", "pp_deg", "pp_division", "global_bsz", "chunks", "layers"):
            if k not in d:
                raise PlanError(f"plan is missing required key {k!r}")
        if not isinstance(d["layers"], list) or not d["layers"]:
            raise PlanError("plan 'layers' must be a non-empty list of per-layer strategies")
        layers = [_strategy_from_dict(LayerStrategy, f"layers[{i}]", x) for i, x in enumerate(d["layers"])]
        vocab = _strategy_from_dict(VocabStrategy, "vocab", d.get("vocab", {}))
        pp_division = d["pp_division"]
        if not isinstance(pp_division, list):
            raise PlanError(f"pp_division must be a list of ints, got {pp_division!r}")
        predicted = {} if d.get("predicted") is None else d["predicted"]
        if not isinstance(predicted, dict):
            raise PlanError(f"predicted must be an object of predicted metrics, got {predicted!r}: fix or remove it")
        compile_ = d.get("compile", False)
        if not isinstance(compile_, bool):
            raise PlanError(f"compile must be true or false, got {compile_!r}")
        per_node = d.get("gpus_per_node")
        if per_node is not None and not (isinstance(d.get("nodes"), int) and isinstance(per_node, int)
                                         and d["nodes"] * per_node == d["world_size"]):
            raise PlanError(f"nodes={d.get('nodes')!r} x gpus_per_node={per_node!r} must be integers whose product "
                            f"is world_size={d['world_size']}: fix them or remove both")
        if "nodes" in d and per_node is None:
            raise PlanError("nodes without gpus_per_node: give both or neither")
        return cls(
            world_size=d["world_size"], pp_deg=d["pp_deg"], pp_division=list(pp_division),
            global_bsz=d["global_bsz"], chunks=d["chunks"], layers=layers, vocab=vocab,
            pipeline_type=_pipeline_type(d.get("pipeline_type", "1f1b")),
            predicted=dict(predicted), compile=compile_, gpus_per_node=per_node,
        )

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        finally:  # after a failed write or replace, no half-written file stays next to the output
            remove_quietly(tmp)

    def _micro_batch_words(self) -> str:
        sizes = self.micro_batch_sizes
        if len(sizes) == self.chunks and len(set(sizes)) == 1:
            return f"{self.chunks} micro-batches"
        return (f"{len(sizes)} micro-batches of {sizes[0]}" + (f" (the last {sizes[-1]})" if sizes[-1] != sizes[0] else "")
                + f" (chunks={self.chunks})")

    def describe(self) -> str:
        """A readable per-layer table."""
        lines = [
            f"plan: world {self.world_size} = pp {self.pp_deg} x stage {self.stage_world}"
            + (f" ({self.nodes} nodes x {self.gpus_per_node} GPUs)" if self.gpus_per_node else "") + "; "
            f"{self.pipeline_type}; global batch {self.global_bsz} in {self._micro_batch_words()}; "
            f"pp_division {self.pp_division}" + ("; layers compiled" if self.compile else ""),
            f"{'layer':>5} {'stage':>5} {'tp':>3} {'consec':>6} {'dp':>3} {'dp_type':>7} {'sp':>3} {'ckpt':>4}"
            + (f" {'fp8':>10}" if self.has_fp8 else ""),
        ]
        v = self.vocab
        lines.append(f"{'vocab':>5} {'0/' + str(self.pp_deg - 1):>5} {v.tp:>3} {int(v.tp_consec):>6} "
                     f"{self.stage_world // v.tp:>3} {v.dp_type:>7} {_sp_cell(v):>3} {'-':>4}")
        for i, s in enumerate(self.layers):
            lines.append(f"{i:>5} {self.stage_of_layer(i):>5} {s.tp:>3} {int(s.tp_consec):>6} "
                         f"{self.stage_world // s.tp:>3} {s.dp_type:>7} {_sp_cell(s):>3} {int(s.checkpoint):>4}"
                         + (f" {s.fp8 or '-':>10}" if self.has_fp8 else ""))
        if self.predicted:
            lines.append("predicted: " + ", ".join(f"{k}={v}" for k, v in self.predicted.items()))
        return "\n".join(lines)


# -------------------------------------------------------------------- helpers

def _check_int(name: str, v: Any, minimum: int, maximum: Optional[int] = None) -> None:
    check(v, int, name, minimum, maximum, error=PlanError)


def _check_strategy(name: str, s, stage_world: int, model: Optional["GPTConfig"]) -> None:
    _check_int(f"{name}.tp", s.tp, 1)
    if stage_world % s.tp:
        raise PlanError(f"{name}.tp={s.tp} does not divide the stage size {stage_world} "
                        f"(world_size / pp_deg): use a tp that divides {stage_world}")
    if s.dp_type not in DP_TYPES:
        raise PlanError(f"{name}.dp_type={s.dp_type!r}: use one of {', '.join(DP_TYPES)}")
    if not isinstance(s.tp_consec, bool):
        raise PlanError(f"{name}.tp_consec must be true or false, got {s.tp_consec!r}")
    if not isinstance(s.sp, bool) and s.sp != ULYSSES:
        raise PlanError(f"{name}.sp must be false, true (Megatron) or \"{ULYSSES}\", got {s.sp!r}")
    if isinstance(s, LayerStrategy) and not isinstance(s.checkpoint, bool):
        raise PlanError(f"{name}.checkpoint must be true or false, got {s.checkpoint!r}")
    if isinstance(s, LayerStrategy) and s.fp8 is not None and s.fp8 not in FP8_RECIPES:
        raise PlanError(f"{name}.fp8={s.fp8!r}: use one of {', '.join(FP8_RECIPES)}, or leave it out for bf16")
    if s.sp == ULYSSES:
        # K/V heads are replicated up to the group size, so only the query heads must divide
        dims = ("num_attention_heads",) if isinstance(s, LayerStrategy) else ()
    else:
        dims = ("num_attention_heads", "num_query_groups", "ffn_hidden_size")
    for dim in dims if model is not None else ():
        size = getattr(model, dim)
        if size % s.tp:
            what = "the Ulysses group size" if s.sp == ULYSSES else "tp"
            raise PlanError(f"{name}.tp={s.tp} ({what}) does not divide --{dim.replace('_', '-')}={size}: "
                            f"use a tp that divides it")


def _sp_cell(s) -> str:
    return "u" if s.sp == ULYSSES else str(int(s.sp))


def _strategy_dict(s: LayerStrategy) -> Dict[str, Any]:
    """A layer's JSON form: fp8 only where it is set (absent = bf16, as in files without it)."""
    d = dataclasses.asdict(s)
    if d["fp8"] is None:
        del d["fp8"]
    return d


def _strategy_from_dict(cls, name: str, d: Any):
    if not isinstance(d, dict):
        raise PlanError(f"{name} must be an object like {{\"tp\": 1, \"dp_type\": \"ddp\"}}, got {d!r}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PlanError(f"{name}: unknown key(s) {unknown}: remove them (allowed: {sorted(allowed)})")
    kwargs = {}
    for k, v in d.items():
        if k in ("tp_consec", "sp", "checkpoint") and isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
            v = bool(v)  # hand-written plans often use 0/1 for flags
        kwargs[k] = v
    return cls(**kwargs)


def _pipeline_type(v: Any) -> str:
    if v == "pipedream_flush":  # Galvatron's name for 1F1B
        return "1f1b"
    if v not in PIPELINE_TYPES:
        raise PlanError(f"pipeline_type={v!r}: use one of gpipe, 1f1b (or pipedream_flush)")
    return v


def even_division(num_layers: int, pp_deg: int) -> List[int]:
    """Layers split as evenly as possible, earlier stages taking the remainder last."""
    base, extra = divmod(num_layers, pp_deg)
    return [base + (1 if s >= pp_deg - extra else 0) for s in range(pp_deg)]


def from_galvatron_dict(d: Dict[str, Any], world_size: Optional[int] = None) -> Plan:
    """A Hetu-Galvatron config (galvatron_config.py) as a Plan; ``world_size``: the launch's, which it omits."""
    from megatron_galvatron import galvatron_config  # it builds Plans, so it imports this module
    return galvatron_config.from_galvatron_dict(d, world_size=world_size)


def load(path: str, world_size: Optional[int] = None) -> Plan:
    """Load a native plan or a Hetu-Galvatron config; ``world_size`` fills what Galvatron omits."""
    d = read_object(path, "plan", "fix it or write one with search/run.py", PlanError)
    if "format" not in d and "tp_sizes_enc" in d:
        return from_galvatron_dict(d, world_size=world_size)
    return Plan.from_dict(d)


def check_fp8_skip(recipe: Optional[str], skip_first: int, skip_last: int, num_layers: int) -> None:
    """The --fp8-skip-first/--fp8-skip-last flags of GLOBAL mode and of the search."""
    for flag, n in (("--fp8-skip-first", skip_first), ("--fp8-skip-last", skip_last)):
        if n < 0:
            raise PlanError(f"{flag}={n} must be >= 0")
    if recipe is None and (skip_first or skip_last):
        raise PlanError("--fp8-skip-first/--fp8-skip-last need --fp8 tensorwise or rowwise")
    if recipe is not None and skip_first + skip_last >= num_layers:
        raise PlanError(f"--fp8-skip-first {skip_first} + --fp8-skip-last {skip_last} leave none of the {num_layers} "
                        f"layers in fp8: skip fewer, or drop --fp8")


def uniform(world_size: int, num_layers: int, pp_deg: int = 1, tp: int = 1, tp_consec: bool = True,
            dp_type: str = "ddp", sp: Union[bool, str] = False, checkpoint: bool = False, global_bsz: int = 8,
            chunks: int = 1, pipeline_type: str = "1f1b", pp_division: Optional[Sequence[int]] = None,
            vocab_tp: Optional[int] = None, fp8: Optional[str] = None, fp8_skip_first: int = 0,
            fp8_skip_last: int = 0) -> Plan:
    """GLOBAL mode: every layer under the same strategy (as in Megatron-LM); with ``fp8``, all
    layers but the first ``fp8_skip_first`` and the last ``fp8_skip_last`` compute in float8."""
    layer = LayerStrategy(tp=tp, tp_consec=tp_consec, dp_type=dp_type, sp=sp, checkpoint=checkpoint)
    layers = [dataclasses.replace(layer, fp8=fp8) if fp8_skip_first <= i < num_layers - fp8_skip_last else layer
              for i in range(num_layers)]
    vocab = VocabStrategy(tp=tp if vocab_tp is None else vocab_tp, tp_consec=tp_consec, dp_type=dp_type, sp=sp)
    return Plan(world_size=world_size, pp_deg=pp_deg,
                pp_division=list(pp_division) if pp_division else even_division(num_layers, pp_deg),
                global_bsz=global_bsz, chunks=chunks, layers=layers, vocab=vocab,
                pipeline_type=_pipeline_type(pipeline_type))
