"""What counts as a lost peer, the words its one line gives, and --distributed-timeout-minutes
reaching init_process_group (the end-to-end case, a rank SIGKILLed mid-run, is in
test_preemption.py)."""
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron_galvatron import parallel_state
from megatron_galvatron.training.peer_failure import describe, is_peer_failure

# What gloo raised when a peer was SIGKILLed, or SIGSTOPped past the timeout (torch 2.13).
RESET = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                     "[127.0.0.1]:61121: Connection reset by peer. This is typically caused by a remote worker "
                     "hanging or bugs in the application. Check the logs of the remote worker before reporting "
                     "an error. GLHF!")
TIMEOUT = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:133] Timed out "
                       "waiting 15000ms for send operation to complete")


def test_gloo_transport_errors_are_lost_peers_in_a_few_words():
    assert is_peer_failure(RESET) and is_peer_failure(TIMEOUT)
    assert describe(RESET) == "Read error [127.0.0.1]:61121: Connection reset by peer"
    assert describe(TIMEOUT) == "Timed out waiting 15000ms for send operation to complete"


def test_other_errors_are_not():
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x3)"))
    assert not is_peer_failure(ValueError("/gloo/ in a message of another type"))


def test_the_timeout_reaches_init_process_group(monkeypatch):
    seen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    parallel_state.init_distributed(torch.device("cpu"), timeout_minutes=0.25)
    assert seen == {"backend": "gloo", "timeout": timedelta(seconds=15)}
