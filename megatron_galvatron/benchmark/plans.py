"""The plans a benchmark or profiling tool runs: plan files and uniform plans spelled inline."""
import os

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.errors import UserError


def load_plans(files, specs, world: int, num_layers: int):
    """(name, plan) for each plan file (named by its file name) and each uniform plan spec."""
    plans = [(os.path.basename(f), plan_mod.load(f, world_size=world)) for f in files]
    return plans + [(s, parse_global_plan(s, world, num_layers)) for s in specs]


def parse_global_plan(spec: str, world: int, num_layers: int) -> plan_mod.Plan:
    """'tp=2,pp=1,dp=zero3,sp=1,ckpt=1,gbs=16,chunks=2,consec=1,vtp=2,sched=1f1b,fp8=tensorwise,fp8skip=2:1'
    (fp8skip=F:L keeps the first F and the last L layers in bf16)."""
    items = [item for item in spec.split(",") if item]
    if not all("=" in item for item in items):
        raise UserError(f"--global-plans {spec!r}: a comma list of key=value, e.g. tp=1,dp=zero2,gbs=16")
    kv = dict(item.split("=", 1) for item in items)
    known = {"tp", "pp", "dp", "sp", "ckpt", "gbs", "chunks", "consec", "vtp", "sched", "fp8", "fp8skip"}
    if set(kv) - known:
        raise UserError(f"--global-plans {spec!r}: unknown key(s) {sorted(set(kv) - known)}; known: {sorted(known)}")

    def number(key: str, default: int, lowest: int = 0, v=None) -> int:
        v = kv.get(key, str(default)) if v is None else v
        if not (v.isascii() and v.isdigit() and len(v) <= 9 and int(v) >= lowest):
            raise UserError(f"--global-plans {spec!r}: {key}={v!r} must be an integer >= {lowest}")
        return int(v)

    tp = number("tp", 1, 1)
    skip = kv.get("fp8skip", "0:0").split(":")
    if len(skip) != 2:
        raise UserError(f"--global-plans {spec!r}: fp8skip takes F:L, the first F and last L layers kept in bf16")
    skip_first, skip_last = (number("fp8skip", 0, v=part) for part in skip)
    try:
        plan_mod.check_fp8_skip(kv.get("fp8"), skip_first, skip_last, num_layers)
    except plan_mod.PlanError as e:  # it speaks of the CLI flags: say which spec and key
        raise UserError(f"--global-plans {spec!r}: fp8skip={kv.get('fp8skip')} with fp8={kv.get('fp8')}: {e}") from None
    return plan_mod.uniform(world, num_layers, pp_deg=number("pp", 1, 1), tp=tp,
                            tp_consec=bool(number("consec", 1)), dp_type=kv.get("dp", "ddp"),
                            sp=bool(number("sp", 0)), checkpoint=bool(number("ckpt", 0)),
                            global_bsz=number("gbs", 8), chunks=number("chunks", 1),
                            pipeline_type=kv.get("sched", "1f1b"), vocab_tp=number("vtp", tp),
                            fp8=kv.get("fp8"), fp8_skip_first=skip_first, fp8_skip_last=skip_last)
