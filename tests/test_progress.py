"""Progress of long tool runs shows in a log file too: plain lines where stderr is not a terminal
(a pipe, a Slurm log), never carriage-return bars; an error leaves no progress line after it."""
import io
import json
import os
import subprocess
import sys

import pytest

from megatron_galvatron.progress import Progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plain_lines_with_counts_and_eta_off_a_terminal():
    out = io.StringIO()
    with Progress(200, "tokenizing", unit="B", unit_scale=True, file=out, interval_s=0) as bar:
        bar.update(50)
        bar.update(150)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("tokenizing: 50 B of 200 B (25%), ETA ")
    assert lines[-1].startswith("tokenizing: 200 B of 200 B (100%), ETA 0 s")
    assert len(lines) == 3  # two updates and the closing line


def test_quiet_between_intervals_and_nothing_when_disabled():
    out = io.StringIO()
    with Progress(10, "x", file=out, interval_s=3600) as bar:
        for _ in range(10):
            bar.update()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]]  # only the closing line
    off = io.StringIO()
    with Progress(10, "x", file=off, enabled=False) as bar:
        bar.update(10)
    assert off.getvalue() == ""


def test_an_error_is_not_followed_by_a_progress_line():
    out = io.StringIO()
    with pytest.raises(ValueError):
        with Progress(10, "x", file=out, interval_s=3600) as bar:
            bar.update(3)
            raise ValueError("bad line")
    assert out.getvalue() == ""


def test_preprocess_reports_progress_into_a_pipe(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": " ".join(str(i + k) for k in range(20))}) + "\n" for i in range(50)))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", str(src),
                        "--output-prefix", str(tmp_path / "out"), "--tokenizer-type", "NullTokenizer",
                        "--vocab-size", "100"],
                       capture_output=True, text=True, timeout=240, cwd="/")
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stderr.splitlines() if line.startswith("tokenizing: ")]
    assert progress and "(100%)" in progress[-1] and "\r" not in r.stderr
    assert f"{src.stat().st_size / 1000:.1f} kB of" in progress[-1]
