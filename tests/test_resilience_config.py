"""The preemption, failure and bad-step flags become ResilienceConfig; exiting early without
--save, or a count out of range, is one line saying what to give instead."""
import pytest

from megatron_galvatron.errors import UserError
from megatron_galvatron.training.arguments import build_parser, training_config


def _config(*flags):
    return training_config(build_parser().parse_args(list(flags))).resilience


def test_flags_become_the_resilience_config():
    c = _config("--save", "s", "--exit-signal-handler", "--exit-interval", "100", "--exit-duration-in-mins", "230.5",
                "--distributed-timeout-minutes", "3", "--max-skipped-steps", "4", "--async-save")
    assert (c.exit_signal_handler, c.exit_interval, c.exit_duration_mins, c.distributed_timeout_mins,
            c.max_skipped_steps, c.async_save) == (True, 100, 230.5, 3.0, 4, True)
    d = _config()
    assert (d.exits_early, d.distributed_timeout_mins, d.max_skipped_steps, d.async_save) == (False, 10.0, 0, False)


def test_exit_on_nonfinite_0_means_skipped_steps_never_stop_the_run():
    assert _config("--exit-on-nonfinite", "0", "--max-skipped-steps", "3").max_skipped_steps is None
    assert _config("--exit-on-nonfinite", "1", "--max-skipped-steps", "3").max_skipped_steps == 3


@pytest.mark.parametrize("flags, message", [
    (["--exit-signal-handler"], "--exit-signal-handler saves a checkpoint before exiting: give --save DIR "
                                "(and --load DIR to resume)"),
    (["--exit-duration-in-mins", "5"], "--exit-duration-in-mins saves a checkpoint before exiting"),
])
def test_a_bad_combination_is_one_line(flags, message):
    with pytest.raises(UserError) as e:
        _config(*flags)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags", [["--save", "s", "--exit-interval", "0"],
                                   ["--save", "s", "--exit-duration-in-mins", "0"],
                                   ["--distributed-timeout-minutes", "-1"], ["--max-skipped-steps", "-2"]])
def test_a_value_out_of_range_is_argparse_one_line(flags, capsys):
    with pytest.raises(SystemExit) as e:
        _config(*flags)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and flags[-2] in err and "Traceback" not in err
