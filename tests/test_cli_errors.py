"""Bad input to pretrain_gpt.py ends in one line `pretrain_gpt.py: error: ...` on stderr and exit
status 2 (on every rank), never a traceback. All cases run concurrently to keep the suite quick."""
import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_galvatron.plan import uniform

ROOT = os.path.dirname(os.path.abspath(os.path.join(__file__, "..")))
SCRIPT = os.path.join(ROOT, "pretrain_gpt.py")
TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "8",
        "--vocab-size", "64", "--mock-data", "--train-iters", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_errors")
    malformed = tmp / "malformed.json"
    malformed.write_text('{"format": "megatron_galvatron.plan/1", "world_size": 1,\n  "pp_deg": 1,,\n}')
    for_8 = tmp / "plan8.json"
    uniform(8, 2, tp=2, global_bsz=8).save(str(for_8))
    unknown_key = tmp / "unknown_key.json"
    d = uniform(1, 2).to_dict()
    d["micro_batch"] = 4
    unknown_key.write_text(json.dumps(d))
    ulysses = tmp / "ulysses.json"
    ulysses.write_text(json.dumps({"pp_deg": 1, "tp_sizes_enc": "1,1", "tp_consecutive_flags": "1,1",
                                   "dp_types_enc": "0,0", "use_sp": "2,0", "global_bsz": 8, "chunks": 1}))
    cases = {
        "malformed_json": (["--galvatron-config", str(malformed)], "not valid JSON"),
        "world_size_mismatch": (["--galvatron-config", str(for_8)], "world_size=8"),
        "unknown_plan_key": (["--galvatron-config", str(unknown_key)], "micro_batch"),
        "pp_deg_not_dividing_world": (["--pp-deg", "2"], "--pp-deg 2"),
        "tp_not_dividing_world": (["--global-tp-deg", "2"], "--global-tp-deg 2"),
        "missing_config_file": (["--galvatron-config", str(tmp / "nowhere.json")], "nowhere.json"),
        "galvatron_use_sp": (["--galvatron-config", str(ulysses)], "use_sp"),
        "hidden_not_dividing_heads": (["--hidden-size", "30"], "--hidden-size 30"),
    }
    procs = {}
    for name, (flags, _) in cases.items():
        procs[name] = [subprocess.Popen([sys.executable, SCRIPT] + TINY + flags, cwd=ROOT, env=_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    # TP that does not divide the heads can only be asked for with more than one process:
    # launched by hand (as torchrun would) so that each rank's stderr can be read on its own.
    port = str(_free_port())
    flags = TINY + ["--num-attention-heads", "3", "--hidden-size", "48", "--global-tp-deg", "2"]
    procs["tp_not_dividing_heads"] = [
        subprocess.Popen([sys.executable, SCRIPT] + flags, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
        for r in range(2)]
    cases["tp_not_dividing_heads"] = (flags, "--num-attention-heads=3")
    out = {}
    for name, ps in procs.items():
        results = []
        for p in ps:
            stdout, stderr = p.communicate(timeout=120)
            results.append((p.returncode, stdout, stderr))
        out[name] = (cases[name][1], results)
    return out


@pytest.mark.parametrize("case", ["malformed_json", "world_size_mismatch", "unknown_plan_key",
                                  "pp_deg_not_dividing_world", "tp_not_dividing_world", "missing_config_file",
                                  "galvatron_use_sp", "hidden_not_dividing_heads", "tp_not_dividing_heads"])
def test_one_line_error_exit_2_no_traceback(outcomes, case):
    fragment, results = outcomes[case]
    for rank, (rc, stdout, stderr) in enumerate(results):
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert "Traceback" not in stderr, stderr
        assert rc == 2, (rc, stderr)
        assert "iteration" not in stdout
        assert len(lines) == 1, f"stderr should be one line:\n{stderr}"
        # Launched by hand, no torchrun ends rank 1 once rank 0 has said it: after its grace
        # period it says it too, with its rank (errors.report_error).
        prefix = "pretrain_gpt.py: error: " + (f"(rank {rank}) " if rank else "")
        assert lines[0].startswith(prefix), lines[0]
        assert fragment in lines[0], lines[0]
