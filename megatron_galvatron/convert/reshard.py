"""Move a checkpoint to another plan, offline.

Checkpoints are stored plan-independently (full tensors under canonical names), so any valid
plan loads any checkpoint directly and nothing has to be re-sliced. Resharding therefore
validates the target plan against the checkpoint's model and verifies every file; given an
output root it also writes a copy that records the target plan (files hard-linked where the
filesystem allows, else copied), whose RNG streams are dropped when the plan differs.
"""
import os
import shutil
from typing import Optional, Tuple

from megatron_galvatron import plan as plan_mod
from megatron_galvatron.errors import UserError
from megatron_galvatron.training import checkpointing as ckpt


def reshard(load: str, plan_path: str, world_size: Optional[int] = None, save: Optional[str] = None
            ) -> Tuple[str, plan_mod.Plan, Optional[str]]:
    """(checkpoint directory, validated target plan, directory of the rewritten copy or None)."""
    d, meta, cfg = ckpt.open_verified(load)
    plan = plan_mod.load(plan_path, world_size=world_size)
    plan.validate(cfg, world_size=plan.world_size)
    if save is None:
        return d, plan, None
    same = ckpt.same_plan(meta, plan)
    files = {f: info for f, info in meta["files"].items() if same or not f.startswith("rng_")}
    name, tmp = ckpt.begin_save(save, int(meta["iteration"]))
    try:
        for f in files:
            src, dst = os.path.join(d, f), os.path.join(tmp, f)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
                with open(dst, "rb+") as fh:
                    os.fsync(fh.fileno())
        out = dict(meta, plan=plan.to_dict(), world_size=plan.world_size, files=files,
                   resharded_from={"dir": os.path.abspath(d), "plan": meta.get("plan")})
        return d, plan, ckpt.commit_save(save, name, tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the resharded copy under {save}: {e.strerror or e}")
