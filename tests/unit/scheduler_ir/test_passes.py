from sagellm.core.ir import ExecutionPlan, IRGraph, IRNode, IRNodeKind
from sagellm.scheduler_ir import build_prefill_plan, merge_kv_moves, split_long_prefills
from tests.unit.scheduler_ir.conftest import snapshot, waiting


def ranges(plan, kind=IRNodeKind.PREFILL_CHUNK):
    return [(n.node_id, n.token_start, n.token_end) for n in plan.graph.by_kind(kind)]


def prefill_plan(*seqs, budget=None):
    snap = snapshot(waiting_seqs=seqs)
    return build_prefill_plan(snap, [s.seq_id for s in seqs], token_budget=budget)


def test_split_cuts_a_long_prompt_on_block_boundaries_under_the_budget():
    plan = prefill_plan(waiting(7, pending=40), waiting(9, pending=900))
    out = split_long_prefills(plan, step_budget=256, block_size=64, chunkable={"prefill:9"})
    assert ranges(out.plan) == [("prefill:7", 0, 40), ("prefill:9", 0, 192)]
    assert [(n.node_id, n.token_start, n.token_end) for n in out.remainders] == [("prefill:9@192", 192, 900)]
    assert out.dropped == ()
    assert out.chunk_ends() == {9: 192}
    assert out.plan.metadata["split"] == 1


def test_split_respects_per_prompt_limits_and_continues_after_them():
    plan = prefill_plan(waiting(1, pending=300), waiting(2, pending=20), waiting(3, pending=30))
    out = split_long_prefills(plan, step_budget=4096, block_size=16, chunk_limits={"prefill:1": 100},
                              chunkable={"prefill:1"})
    assert ranges(out.plan) == [("prefill:1", 0, 96), ("prefill:2", 0, 20), ("prefill:3", 0, 30)]
    assert out.chunk_ends() == {1: 96}


def test_split_chunk_end_is_block_aligned_in_absolute_positions():
    plan = prefill_plan(waiting(1, computed_tokens=40, pending=200))
    out = split_long_prefills(plan, step_budget=50, block_size=16, chunkable={"prefill:1"})
    assert ranges(out.plan) == [("prefill:1", 40, 80)]  # 40 + 50 = 90 -> last boundary 80


def test_split_first_prompt_always_progresses_by_one_block():
    plan = prefill_plan(waiting(1, computed_tokens=40, pending=200))
    out = split_long_prefills(plan, step_budget=4, block_size=16, chunkable={"prefill:1"})
    assert ranges(out.plan) == [("prefill:1", 40, 48)]


def test_split_keeps_an_unsplittable_first_prompt_whole_and_drops_later_ones_like_lmdeploy():
    plan = prefill_plan(waiting(1, pending=300), waiting(2, pending=10), waiting(3, pending=5))
    out = split_long_prefills(plan, step_budget=100, block_size=16)
    assert ranges(out.plan) == [("prefill:1", 0, 300)]
    assert out.dropped == ("prefill:2", "prefill:3")
    assert out.remainders == ()


def test_split_drops_kv_onloads_of_dropped_prompts():
    from sagellm.scheduler_ir import KVMoveView

    snap = snapshot(
        waiting_seqs=[waiting(1, pending=100), waiting(2, computed_tokens=16, pending=100)],
        kv_moves=[KVMoveView("kv_onload", 2, 0, 16, (5,))],
    )
    out = split_long_prefills(build_prefill_plan(snap, [1, 2]), step_budget=100, block_size=16)
    assert [n.node_id for n in out.plan.graph.nodes] == ["prefill:1"]
    assert out.plan.graph.edges == ()


def kv(node_id, kind, start, end, blocks, tier="host", request="r3"):
    return IRNode(node_id=node_id, kind=kind, request_id=request, token_start=start, token_end=end,
                  block_ids=blocks, tier=tier)


def test_merge_joins_touching_moves_and_rewires_edges():
    nodes = (
        kv("kv_onload:3:0-64", IRNodeKind.KV_ONLOAD, 0, 64, (1, 2)),
        kv("kv_onload:3:64-128", IRNodeKind.KV_ONLOAD, 64, 128, (3, 4)),
        kv("kv_onload:3:192-256", IRNodeKind.KV_ONLOAD, 192, 256, (9,)),  # gap: stays alone
        kv("kv_onload:4:0-64", IRNodeKind.KV_ONLOAD, 0, 64, (5,), request="r4"),  # another sequence
        kv("kv_onload:3:128-192", IRNodeKind.KV_ONLOAD, 128, 192, (6,), tier="ssd"),  # another tier
        IRNode(node_id="prefill:3", kind=IRNodeKind.PREFILL_CHUNK, request_id="r3", token_start=256, token_end=300),
    )
    edges = (("kv_onload:3:0-64", "prefill:3"), ("kv_onload:3:64-128", "prefill:3"), ("kv_onload:3:0-64", "kv_onload:3:64-128"))
    plan = ExecutionPlan(step_id=1, graph=IRGraph(nodes=nodes, edges=edges), token_budget=64)
    merged = merge_kv_moves(plan)
    assert [(n.node_id, n.block_ids) for n in merged.graph.nodes] == [
        ("kv_onload:3:0-128", (1, 2, 3, 4)),
        ("kv_onload:3:192-256", (9,)),
        ("kv_onload:4:0-64", (5,)),
        ("kv_onload:3:128-192", (6,)),
        ("prefill:3", ()),
    ]
    assert merged.graph.edges == (("kv_onload:3:0-128", "prefill:3"),)
    assert merged.metadata["merged_kv"] == 1


def test_merge_without_touching_moves_returns_the_plan_unchanged():
    plan = prefill_plan(waiting(1))
    assert merge_kv_moves(plan) is plan
