"""Worker side of tests/test_long_sequence.py: one training step of a uniform plan at a long
sequence, reporting the loss, the initial parameters and the step's wall time."""
import time

from megatron_galvatron.model.canonical import gather_model
from megatron_galvatron.plan import uniform
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.train import reduce_loss, setup, train_step
from tests.plan_runner import model_argv


def train_one_step(rank, world, cfg, lr, clip, tp, sp, extra_argv=()):
    args = build_parser().parse_args(model_argv(cfg, 1, lr, clip) + ["--global-batch-size", "1"] + list(extra_argv))
    plan = uniform(world, cfg["num_layers"], tp=tp, sp=sp, global_bsz=1, chunks=1)
    tr = setup(args, plan.validate(world_size=world))
    params0 = gather_model(tr.stage)
    t0 = time.perf_counter()
    stats = train_step(tr)
    seconds = time.perf_counter() - t0
    return {"params0": params0, "loss": reduce_loss(tr, stats.loss_sum).item(), "seconds": seconds}
