"""tests.dist_utils.run_launched: past its timeout a launcher's ranks end with it."""
import os
import subprocess
import sys
import time

import pytest

from tests.dist_utils import run_launched


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.split()[1:2] == ["Z"] for line in f if line.startswith("State:"))
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_timed_out_launcher_takes_its_children_with_it(tmp_path):
    pid_file = tmp_path / "child.pid"
    launcher = ("import subprocess, sys, time\n"
                "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
                "time.sleep(120)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        run_launched([sys.executable, "-c", launcher], timeout=3)
    child = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)


def test_it_returns_what_subprocess_run_would():
    done = run_launched([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                        timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
