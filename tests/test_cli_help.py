"""pretrain_gpt.py --help names every flag's default, and every flag says what it does."""
import argparse
import contextlib
import io

import pytest

from megatron_galvatron.training.arguments import build_parser

def _flag_actions(parser):
    for group in parser._action_groups:
        for action in group._group_actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield group.title, action


def test_help_prints_a_default_for_every_valued_flag():
    parser = build_parser()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = parser.formatter_class(prog="x")._get_help_string
    for _, action in _flag_actions(parser):
        if action.nargs == 0:
            continue  # an on/off switch is off unless given
        assert "default" in text(action), action.option_strings
    assert "(default: 1234)" in " ".join(out.getvalue().split())  # --seed, as printed


def test_every_flag_has_help():
    missing = [a.option_strings[0] for _, a in _flag_actions(build_parser()) if not (a.help or "").strip()]
    assert not missing, missing
