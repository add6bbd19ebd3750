import io

import pytest

from sagellm.core.ir import ExecutionPlan, IRCycleError, IRGraph, IRNode, IRNodeKind, read_trace, write_trace
from sagellm.core.kv import KVTier
from sagellm.core.serialization import SerializationError


def onload(nid="on1", req="r1"):
    return IRNode(nid, "kv_onload", req, 0, 64, block_ids=(0, 1, 2, 3), tier="host")


def prefill(nid="pf1", req="r1", start=64, end=128):
    return IRNode(nid, IRNodeKind.PREFILL_CHUNK, req, start, end, block_ids=(4, 5, 6, 7))


def decode(nid="d1", req="r2", pos=300):
    return IRNode(nid, "decode", req, pos, pos + 1, block_ids=(9,))


def test_node_basics():
    n = onload()
    assert n.kind is IRNodeKind.KV_ONLOAD and n.tier is KVTier.HOST and n.num_tokens == 64
    assert IRNodeKind.DECODE.is_compute and not IRNodeKind.KV_MIGRATE.is_compute
    m = IRNode("m1", "kv_migrate", "r1", 0, 16, block_ids=(1,), tier="device", peer="engine-b")
    assert IRNode.from_json(m.to_json()) == m


@pytest.mark.parametrize("kw,fragment", [
    (dict(node_id="x", kind="prefill", request_id="r", token_start=0, token_end=1),
     "IRNode.kind: got 'prefill'; accepted: one of 'prefill_chunk', 'decode', 'kv_onload', 'kv_offload', 'kv_migrate'"),
    (dict(node_id="x", kind="decode", request_id="r", token_start=5, token_end=5),
     "IRNode.token_end: got 5; accepted: an integer >= 6"),
    (dict(node_id="x", kind="decode", request_id="r", token_start=0, token_end=1, tier="host"),
     "IRNode.tier: got 'host'; accepted: 'device' for a decode node"),
    (dict(node_id="x", kind="kv_offload", request_id="r", token_start=0, token_end=1, block_ids=(1,)),
     "IRNode.tier: got 'device'; accepted: 'host', 'ssd' or 'remote' for a kv_offload node"),
    (dict(node_id="x", kind="kv_offload", request_id="r", token_start=0, token_end=1, tier="ssd"),
     "IRNode.block_ids: got (); accepted: at least one block id for a kv_offload node"),
    (dict(node_id="x", kind="kv_migrate", request_id="r", token_start=0, token_end=1, block_ids=(1,)),
     "IRNode.peer: got ''; accepted: the target engine for a kv_migrate node"),
    (dict(node_id="x", kind="decode", request_id="r", token_start=0, token_end=1, peer="e"),
     "IRNode.peer: got 'e'; accepted: '' for a decode node (only kv_migrate has a peer)"),
])
def test_node_validation(kw, fragment):
    with pytest.raises(ValueError) as err:
        IRNode(**kw)
    assert str(err.value) == fragment


def test_topological_order_follows_edges_then_listing_order():
    g = IRGraph(
        nodes=[decode(), prefill(), onload(), prefill("pf2", "r3", 0, 32)],
        edges=[("on1", "pf1")],
    )
    assert [n.node_id for n in g.topological_order()] == ["d1", "on1", "pf1", "pf2"]
    assert g.predecessors("pf1") == ("on1",)
    assert g.successors("on1") == ("pf1",)
    assert [n.node_id for n in g.by_kind("prefill_chunk")] == ["pf1", "pf2"]
    assert [n.node_id for n in g.by_request("r1")] == ["pf1", "on1"]
    assert len(g) == 4


def test_diamond_order():
    a, b, c, d = (decode(n, n, i) for i, n in enumerate("abcd"))
    g = IRGraph(nodes=(d, c, b, a), edges=(("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")))
    assert [n.node_id for n in g.topological_order()] == ["a", "c", "b", "d"]


def test_cycle_detection_names_the_cycle():
    a, b, c, d = (decode(n, n, i) for i, n in enumerate("abcd"))
    with pytest.raises(IRCycleError) as err:
        IRGraph(nodes=(a, b, c, d), edges=(("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")))
    assert str(err.value) == "IRGraph.edges: cycle a -> b -> c -> a"
    with pytest.raises(IRCycleError, match="cycle b -> c -> b"):
        IRGraph(nodes=(a, b, c, d), edges=(("a", "b"), ("b", "c"), ("c", "b"), ("c", "d")))
    with pytest.raises(IRCycleError, match="self-loop on node 'a'"):
        IRGraph(nodes=(a,), edges=(("a", "a"),))


def test_graph_validation():
    with pytest.raises(ValueError, match=r"IRGraph.nodes: got \['d1'\]; accepted: unique node ids"):
        IRGraph(nodes=(decode(), decode()))
    with pytest.raises(ValueError, match=r"IRGraph.edges: got \('d1', 'zz'\); accepted: edges between node ids"):
        IRGraph(nodes=(decode(),), edges=(("d1", "zz"),))
    with pytest.raises(KeyError):
        IRGraph().node("nope")


def plan(step=7):
    g = IRGraph(nodes=(onload(), prefill(), decode()), edges=(("on1", "pf1"),))
    return ExecutionPlan(step_id=step, graph=g, token_budget=65, metadata={"strategy": "fifo", "waiting": 3, "ratio": 0.5, "preempt": False})


def test_plan_budget():
    p = plan()
    assert p.num_scheduled_tokens == 65  # 64 prefill + 1 decode; the onload spends no budget
    with pytest.raises(ValueError) as err:
        ExecutionPlan(step_id=0, graph=p.graph, token_budget=64)
    assert str(err.value) == (
        "ExecutionPlan.token_budget: got 64; accepted: >= the 65 tokens its prefill/decode nodes compute"
    )
    with pytest.raises(ValueError, match="ExecutionPlan.metadata"):
        ExecutionPlan(step_id=0, graph=IRGraph(), token_budget=1, metadata={"x": [1]})


def test_plan_round_trips():
    p = plan()
    assert ExecutionPlan.from_dict(p.to_dict()) == p
    assert ExecutionPlan.from_yaml(p.to_yaml()) == p
    restored = ExecutionPlan.from_trace_line(p.to_trace_line())
    assert restored == p
    assert restored.metadata == {"strategy": "fifo", "waiting": 3, "ratio": 0.5, "preempt": False}
    assert type(restored.metadata["preempt"]) is bool and type(restored.metadata["waiting"]) is int
    assert restored.graph.nodes[0].tier is KVTier.HOST
    assert "\n" not in p.to_trace_line()


def test_trace_file_round_trip_and_errors():
    buf = io.StringIO()
    assert write_trace([plan(1), plan(2)], buf) == 2
    text = buf.getvalue()
    assert text.count("\n") == 2
    plans = read_trace(io.StringIO(text + "\n"))
    assert [p.step_id for p in plans] == [1, 2]
    assert plans == [plan(1), plan(2)]
    bad = text + '{"step_id": 3, "graph": {}, "token_budget": 0}\n'
    with pytest.raises(SerializationError, match="trace line 3: ExecutionPlan.token_budget: got 0"):
        read_trace(io.StringIO(bad))
