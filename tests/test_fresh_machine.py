"""The README's first command, as a new user runs it: a clean clone, a fresh virtual environment
with nothing preinstalled, `bash examples/quickstart_cpu.sh` to the end."""
import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests.megatron_log import iteration_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_first_command() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()[0].split("#", 1)[0].strip()


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")),
                    reason="needs git and a git checkout to clone")
def test_readme_first_command_on_a_fresh_venv(tmp_path):
    command = _readme_first_command()
    assert command == "bash examples/quickstart_cpu.sh"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True, timeout=120)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    bindir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(env_dir), OMP_NUM_THREADS="1")
    # The fresh environment sees none of this interpreter's packages.
    probe = subprocess.run([str(bindir / "python"), "-c", "import torch"], env=env, capture_output=True)
    assert probe.returncode != 0
    r = subprocess.run(command.split(), cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    run_dir = clone / "runs" / "quickstart"
    assert (run_dir / "plan.json").exists() and (run_dir / "plan.png").read_bytes()[:4] == b"\x89PNG"
    iterations = iteration_fields(r.stdout)
    assert iterations and max(iterations) == 30 and iterations[30]["train_iters"] == "30", r.stdout[-2000:]


def test_plan_picture_without_matplotlib_is_one_line(tmp_path):
    """A missing optional package costs its output and one line saying how to get it."""
    from megatron_galvatron.plan import uniform
    plan = uniform(2, 4, global_bsz=8)
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from megatron_galvatron.plan import Plan\n"
            "from search.plot import save_plan_picture\n"
            f"ok = save_plan_picture(Plan.from_dict({plan.to_dict()!r}), {str(tmp_path / 'p.png')!r})\n"
            "print('drawn' if ok else 'skipped')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "skipped"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "matplotlib is not installed" in lines[0] and "pip install matplotlib" in lines[0]
    assert not (tmp_path / "p.png").exists()
