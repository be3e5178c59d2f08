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
from megatron_galvatron.checkpoint import format as ckpt_format
from megatron_galvatron.checkpoint.atomic import begin_save, commit_save
from megatron_galvatron.checkpoint.lock import holding
from megatron_galvatron.checkpoint.tensors import open_verified
from megatron_galvatron.errors import UserError


def reshard(load: str, plan_path: str, world_size: Optional[int] = None, save: Optional[str] = None
            ) -> Tuple[str, plan_mod.Plan, Optional[str]]:
    """(checkpoint directory, validated target plan, directory of the rewritten copy or None)."""
    d, meta, cfg = open_verified(load)
    plan = plan_mod.load(plan_path, world_size=world_size)
    plan.validate(cfg, world_size=plan.world_size)
    if save is None:
        return d, plan, None
    same = ckpt_format.same_plan(meta, plan)
    files = {f: info for f, info in meta["files"].items() if same or not ckpt_format.is_rng_file(f)}
    with holding(save):
        return d, plan, _write_copy(d, meta, plan, files, save)


def _write_copy(d: str, meta: dict, plan: plan_mod.Plan, files: dict, save: str) -> str:
    name, tmp = begin_save(save, int(meta["iteration"]))
    try:
        for f in files:
            src, dst = os.path.join(d, f), os.path.join(tmp, f)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
                with open(dst, "rb+") as fh:
                    os.fsync(fh.fileno())
        out = ckpt_format.resharded_meta(meta, plan.to_dict(), plan.world_size, files, d)
        return commit_save(save, name, tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the resharded copy under {save}: {e.strerror or e}")
