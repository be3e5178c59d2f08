"""Plans and nodes: the search keeps TP groups inside a node when the links between nodes are slow
(and not when they are as fast), the plan records the nodes x GPUs per node it was searched for,
older plans still load, and a launch of another shape is refused with one line before any work."""
import json
import os
import subprocess
import sys

import pytest

from megatron_galvatron.layout import Layout
from megatron_galvatron.model.config import GPTConfig
from megatron_galvatron.plan import Plan, PlanError, uniform
from megatron_galvatron.profile_format import load_profiles
from search import _dp_core  # noqa: F401
from search import synthetic
from search.comm import Network, spans_nodes
from search.cost_model import CostModel
from search.engine import Searcher
from search.strategies import Space

ROOT = os.path.dirname(os.path.abspath(os.path.join(__file__, "..")))
WIDE = GPTConfig(family="llama", num_layers=16, hidden_size=8192, num_attention_heads=32, num_query_groups=8,
                 ffn_hidden_size=28672, vocab_size=32000, seq_length=2048)
# NVLink-fast links between the nodes as well
EQUAL_LINKS = dict(inter_busbw_GBps=360.0, inter_latency_s=10e-6, p2p_inter_GBps=250.0)


def best_plan(tmp_path, name, **links):
    d = synthetic.write_profiles(str(tmp_path / name), WIDE, 16, 8, **links)
    hw, model = load_profiles(d)
    cost = CostModel(WIDE, model, Network(hw, 16, 8))
    # TP up to the whole cluster: whether a group leaves its node is the cost model's to weigh
    return Searcher(cost, 16, 16.5, Space(max_tp=16), [16], threads=1).run(top_k=1, progress=False)[0].plan


def tp_groups_leaving_a_node(plan):
    sw = plan.stage_world
    return sum(spans_nodes(s.tp, Layout.of(s, sw).strides(sw)[0], plan.gpus_per_node) for s in plan.layers)


def test_tp_stays_inside_nodes_unless_the_links_between_them_are_as_fast(tmp_path):
    slow = best_plan(tmp_path, "infiniband")
    assert slow.gpus_per_node == 8 and slow.nodes == 2
    assert tp_groups_leaving_a_node(slow) == 0
    # memory needs TP 8 at one stage; with equal links strided groups (one rank per node pair)
    # pay better than consecutive ones, and the search takes them
    fast = best_plan(tmp_path, "equal", **EQUAL_LINKS)
    assert tp_groups_leaving_a_node(fast) > 0
    assert json.loads(json.dumps(fast.to_dict()))["nodes"] == 2


def test_plan_records_its_node_shape_and_old_plans_still_load():
    p = uniform(16, 4, pp_deg=2, tp=2, global_bsz=16, chunks=2)
    old = p.to_dict()
    assert "nodes" not in old and "gpus_per_node" not in old
    assert Plan.from_dict(old).gpus_per_node is None
    p.gpus_per_node = 8
    d = p.to_dict()
    assert (d["nodes"], d["gpus_per_node"]) == (2, 8)
    back = Plan.from_dict(d)
    assert back.gpus_per_node == 8 and back.nodes == 2
    assert "2 nodes x 8 GPUs" in back.describe()
    back.validate(world_size=16, gpus_per_node=8)
    back.validate(world_size=16)  # no launcher shape known (one process): nothing to compare
    with pytest.raises(PlanError) as e:
        back.validate(world_size=16, gpus_per_node=4)
    msg = str(e.value)
    assert "\n" not in msg and "2 node(s) x 8 GPUs" in msg and "--nproc-per-node 8" in msg and "--num-nodes 4" in msg
    for bad in ({"nodes": 3, "gpus_per_node": 8}, {"nodes": 2}, {"gpus_per_node": 8}):
        with pytest.raises(PlanError):
            Plan.from_dict({**old, **bad})


def test_launch_of_another_node_shape_is_refused_with_one_line(tmp_path):
    p = uniform(2, 2, global_bsz=2, chunks=1)
    p.gpus_per_node = 1  # searched for 2 nodes x 1 GPU
    path = tmp_path / "plan.json"
    p.save(str(path))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    # rank 0 of a 1 node x 2 processes torchrun launch; the check comes before any process group
    env.update(OMP_NUM_THREADS="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), "--num-layers", "2", "--hidden-size",
                        "32", "--num-attention-heads", "4", "--seq-length", "8", "--vocab-size", "64", "--mock-data",
                        "--train-iters", "1", "--galvatron-config", str(path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "2 node(s) x 1 GPUs but launched with 2 processes per node" in lines[0]


def test_relayout_sets_that_leave_a_node_are_priced_with_the_network(tmp_path):
    d = synthetic.write_profiles(str(tmp_path / "ib"), WIDE, 16, 8)
    hw, model = load_profiles(d)
    net = Network(hw, 16, 8)
    cost = CostModel(WIDE, model, net)
    full = 16 * WIDE.seq_length * WIDE.hidden_size * 4  # the micro-batch's fp32 activation
    # strided TP 2 pairs rank r with r + 8, on the other node; consecutive TP 2 pairs 2d, 2d + 1:
    # the exchange sets chain ranks of both nodes together
    strided, consec = Layout(2, False, False), Layout(2, True, False)
    inter = net.collective("all_gather", 16, 8, full * 16 / 8)
    assert cost.relayout(16, 16, strided, consec) == pytest.approx(2 * inter)
    # dropping sequence parallelism gathers inside each consecutive TP group: NVLink numbers
    intra = net.collective("all_gather", 2, 1, full * 2 / 16) + net.collective("all_gather", 2, 1, full * 2 / 8)
    assert cost.relayout(16, 16, Layout(2, True, True), consec) == pytest.approx(intra)
    assert net.collective("all_gather", 2, 8, 1e8) > 4 * net.collective("all_gather", 2, 1, 1e8)
