"""Run a function on N CPU processes with the gloo backend and collect each rank's result."""
import os
import signal
import socket
import subprocess
import tempfile
import traceback

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, outdir, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        result = fn(rank, world, *args)
        torch.save({"ok": True, "result": result}, os.path.join(outdir, f"{rank}.pt"))
    except BaseException:  # the parent reports every rank's failure
        torch.save({"ok": False, "error": traceback.format_exc()}, os.path.join(outdir, f"{rank}.pt"))
        raise
    finally:
        # Drop models (and their process groups) before tearing down, so no gloo worker thread
        # is left waiting on the interpreter at shutdown.
        import gc
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
        gc.collect()


def run_distributed(world: int, fn, *args, timeout: float = 600):
    """fn(rank, world, *args) on `world` spawned processes; returns the list of results by rank."""
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_entry, args=(world, _free_port(), outdir, fn, args), nprocs=world,
                                 join=False, start_method="spawn")
        try:
            while not ctx.join(timeout=timeout):
                pass
        except Exception as e:
            errors = []
            for r in range(world):
                path = os.path.join(outdir, f"{r}.pt")
                if os.path.exists(path):
                    res = torch.load(path, weights_only=False)
                    if not res["ok"]:
                        errors.append(f"rank {r}:\n{res['error']}")
            raise AssertionError("\n".join(errors) or str(e)) from None
        return [torch.load(os.path.join(outdir, f"{r}.pt"), weights_only=False)["result"] for r in range(world)]


def run_launched(cmd, timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) for a launcher (torchrun) that, past
    its timeout, ends the launcher's whole process group: subprocess.run kills the launcher alone,
    and its ranks, left waiting in a collective, would hold the CPU through every later test."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
