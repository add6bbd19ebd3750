import pytest

from sagellm.core.ir import IRNodeKind
from sagellm.scheduler_ir import KVMoveView, build_decode_plan, build_prefill_plan, node_seq_id
from tests.unit.scheduler_ir.conftest import running, snapshot, waiting


def test_prefill_plan_nodes_edges_and_budget():
    snap = snapshot(
        waiting_seqs=[waiting(1, pending=40), waiting(2, computed_tokens=32, pending=8)],
        running_seqs=[running(5)],
        kv_moves=[
            KVMoveView("kv_onload", 2, 0, 32, (7, 8), tier="host"),
            KVMoveView("kv_offload", 5, 0, 16, (3,), tier="host"),
        ],
        step_id=4,
    )
    plan = build_prefill_plan(snap, [2, 1], metadata={"kind": "prefill"})
    assert [n.node_id for n in plan.graph.nodes] == [
        "kv_onload:2:0-32", "prefill:2", "prefill:1", "kv_offload:5:0-16",
    ]
    assert plan.graph.edges == (("kv_onload:2:0-32", "prefill:2"),)
    assert [(n.token_start, n.token_end) for n in plan.graph.by_kind(IRNodeKind.PREFILL_CHUNK)] == [(32, 40), (0, 40)]
    assert plan.step_id == 4 and plan.token_budget == 4096 and plan.num_scheduled_tokens == 48
    assert plan.metadata == {"kind": "prefill"}


def test_prefill_plan_budget_grows_to_what_is_scheduled():
    """LMDeploy always admits its first waiting sequence, even past the budget; the plan says so."""
    plan = build_prefill_plan(snapshot(waiting_seqs=[waiting(1, pending=500)]), [1], token_budget=100)
    assert plan.token_budget == 500


def test_decode_plan_one_node_per_running_sequence_in_order():
    snap = snapshot(running_seqs=[running(1, computed=20), running(2, computed=7)])
    plan = build_decode_plan(snap, [2, 1])
    assert [(n.node_id, n.token_start, n.token_end) for n in plan.graph.nodes] == [("decode:2", 7, 8), ("decode:1", 20, 21)]
    assert plan.token_budget == 128


def test_node_seq_id_parses_every_convention():
    assert [node_seq_id(i) for i in ("prefill:3", "prefill:3@64", "decode:12", "kv_migrate:9:0-64")] == [3, 3, 12, 9]
    with pytest.raises(ValueError, match="does not follow"):
        node_seq_id("bogus")
