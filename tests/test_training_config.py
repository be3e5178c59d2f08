"""The typed training config holds what the flags say."""
from megatron_galvatron.training.arguments import build_parser, training_config


def test_flags_become_typed_fields():
    c = training_config(build_parser().parse_args(
        ["--train-iters", "50", "--lr", "1e-3", "--adam-beta1", "0.8", "--lr-warmup-iters", "5",
         "--eval-interval", "10", "--eval-iters", "2", "--save", "/tmp/s", "--no-load-optim",
         "--exit-on-nonfinite", "0", "--data-path", "a", "b"]))
    assert (c.train_iters, c.lr.lr, c.lr.warmup_iters, c.optimizer.betas) == (50, 1e-3, 5, (0.8, 0.95))
    assert c.lr.decay_iters == 50  # --lr-decay-iters defaults to --train-iters
    assert (c.eval.interval, c.eval.iters, c.eval.skip_train) == (10, 2, False)
    assert (c.checkpoint.save, c.checkpoint.load, c.checkpoint.load_optim, c.checkpoint.load_rng) == \
        ("/tmp/s", None, False, True)
    assert c.resilience.max_skipped_steps is None and c.data.path == ["a", "b"]  # --exit-on-nonfinite 0: never stop

