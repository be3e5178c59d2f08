"""Where every local parameter of a stage sits in its full tensor, keyed by parameter name.

Modules declare their parameters' ``ParamSpec`` when they create them; this map adds the TP
coordinates of the unit that owns them. It is collected before any wrapper (FSDP swaps the
parameter objects, compile renames nothing), so names stay the canonical ones that
initialisation, gradient clipping and checkpoints look up.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

from torch import nn

from megatron_galvatron.tensor_parallel.sharding import ShardSpec


@dataclass(frozen=True)
class ParamMeta:
    shard_spec: ShardSpec
    full_shape: Tuple[int, ...]
    tp_rank: int
    tp_size: int
    sequence_parallel: bool


def param_facts(module: nn.Module, tp_rank: int, tp_size: int, prefix: str = "") -> Dict[str, ParamMeta]:
    """Every parameter of ``module`` (named ``prefix`` + its name inside it) with its facts."""
    out = {}
    for mname, m in module.named_modules():
        for pname, spec in m.__dict__.get("param_specs", {}).items():
            if getattr(m, pname) is None:
                continue
            name = f"{prefix}{mname}.{pname}" if mname else prefix + pname
            out[name] = ParamMeta(spec.shard_spec, spec.full_shape, tp_rank, tp_size, spec.sequence_parallel)
    undeclared = sorted(prefix + n for n, _ in module.named_parameters() if prefix + n not in out)
    if undeclared:
        raise ValueError(f"parameters created without add_param: {undeclared}")
    return out
