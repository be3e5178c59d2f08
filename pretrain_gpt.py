"""Train a GPT/LLaMA model under a per-layer hybrid parallel plan.

    torchrun --nproc-per-node 8 pretrain_gpt.py --galvatron-config plan.json <model flags> ...
    torchrun --nproc-per-node 4 pretrain_gpt.py --global-tp-deg 2 --default-dp-type zero3 ...

Launchers and the environment read: docs/launch.md.
"""
import gc

import torch.distributed as dist

from megatron_galvatron.errors import exit_on_user_error
from megatron_galvatron.launch_env import adopt_slurm_env
from megatron_galvatron.training.argument_checks import check_args
from megatron_galvatron.training.arguments import build_parser
from megatron_galvatron.training.peer_failure import exit_on_peer_failure
from megatron_galvatron.training.run_summary import data_summary, model_summary, toy_note
from megatron_galvatron.training.train import AlreadyTrained, setup, train


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    with exit_on_user_error("pretrain_gpt.py"), exit_on_peer_failure("pretrain_gpt.py"):
        check_args(args)  # before any process group, model or data
        adopt_slurm_env()  # srun without torchrun: one task per GPU
        try:
            trainer = setup(args, stop_if_trained=True)
        except AlreadyTrained as done:
            trainer = None
            if _rank() == 0:
                print(done, flush=True)
        if trainer is not None:
            if trainer.ps.rank == 0:
                note = toy_note(args, parser)
                if note:
                    print(note, flush=True)
                print(model_summary(trainer.cfg), flush=True)
                print(data_summary(trainer.config.data, trainer.cfg, trainer.train_data, trainer.valid_data),
                      flush=True)
                print(trainer.plan.describe(), flush=True)
            train(trainer)
    if dist.is_initialized():
        dist.destroy_process_group()
    # The model holds its process groups in reference cycles; left to interpreter shutdown, a
    # gloo worker thread still releasing its last work cannot take the GIL and aborts the process.
    del trainer
    gc.collect()


if __name__ == "__main__":
    main()
