import time

import pytest

from sagellm.core.ir import IRNodeKind
from sagellm.scheduler_ir import (
    PlanTracer, StepExecutor, StrategyError, StrategyOptions, WaitingDecision, build_strategy, read_records,
)
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy
from tests.unit.scheduler_ir.conftest import running, snapshot, waiting


def test_fifo_is_a_passthrough_without_a_tracer():
    executor = StepExecutor(build_strategy("fifo"))
    assert executor.passthrough is True
    snap = snapshot(waiting_seqs=[waiting(2, pending=5000), waiting(1, pending=10)])
    step = executor.prefill_step(snap)
    # no split pass: the engine applies its own budget, exactly as without sagellm
    assert step.order == (2, 1) and step.chunk_ends == {} and step.remainders == ()
    assert [n.num_tokens for n in step.plan.graph.nodes] == [5000, 10]


def test_slo_aware_step_orders_chunks_and_rejects():
    executor = StepExecutor(build_strategy("slo_aware", StrategyOptions(chunk_tokens=256)))
    assert executor.passthrough is False
    snap = snapshot(
        now_s=100.0,
        block_size=64,
        waiting_seqs=[
            waiting(1, arrival_s=99.0, pending=1000, slo_ttft_ms=30_000),
            waiting(2, arrival_s=100.0, pending=40, slo_ttft_ms=300),
            waiting(3, arrival_s=99.0, pending=10, slo_ttft_ms=500),  # waited 1000 ms: hopeless
        ],
    )
    step = executor.prefill_step(snap)
    assert step.order == (2, 1)
    assert step.chunk_ends == {1: 256}
    assert list(step.rejected) == [3]
    assert [(n.node_id, n.token_start, n.token_end) for n in step.plan.graph.by_kind(IRNodeKind.PREFILL_CHUNK)] == [
        ("prefill:2", 0, 40), ("prefill:1", 0, 256),
    ]
    assert [(n.node_id, n.token_start, n.token_end) for n in step.remainders] == [("prefill:1@256", 256, 1000)]
    assert step.plan.metadata["strategy"] == "slo_aware" and step.plan.metadata["rejected"] == 1


class _Broken(SchedulingStrategy):
    name = "broken"

    def plan_waiting(self, snapshot):
        return WaitingDecision(order=(1,))

    def order_running(self, snapshot):
        return (99,)

    def preempt(self, snapshot, candidates):
        return 42

    def hold_from_round(self, snapshot):
        return frozenset(snapshot.ids(snapshot.running))


def test_a_decision_that_does_not_fit_the_snapshot_is_a_clear_error():
    executor = StepExecutor(_Broken())
    snap = snapshot(waiting_seqs=[waiting(1), waiting(2)], running_seqs=[running(5)])
    with pytest.raises(StrategyError, match=r"strategy 'broken': WaitingDecision must name every waiting sequence once: missing \[2\]"):
        executor.prefill_step(snap)
    with pytest.raises(StrategyError, match=r"order_running must return each running sequence once, got \[99\] for \[5\]"):
        executor.decode_order(snap)
    with pytest.raises(StrategyError, match=r"preempt returned 42, not one of \[5\]"):
        executor.preempt(snap, (5,))
    with pytest.raises(StrategyError, match=r"hold_from_round must return some of the running sequences \[5\] "
                                            r"and leave at least one, got \[5\]"):
        executor.held_from_round(snap)


def test_decode_order_preempt_and_choice_follow_the_strategy():
    executor = StepExecutor(build_strategy("priority", StrategyOptions(aging_s=0.0)))
    snap = snapshot(waiting_seqs=[waiting(1)], running_seqs=[running(5, priority=2), running(6, priority=0)])
    assert executor.decode_order(snap) == (6, 5)
    assert executor.preempt(snap, (6, 5)) == 5
    assert executor.choose_prefill(snap, True) is True


def test_tracer_records_every_plan_with_request_metadata(tmp_path):
    path = tmp_path / "sub" / "plans.jsonl"
    started = time.time()
    tracer = PlanTracer(path)
    executor = StepExecutor(build_strategy("fifo"), tracer=tracer)
    assert executor.passthrough is False
    snap = snapshot(step_id=3, waiting_seqs=[waiting(1, tenant="acme", priority=2, slo_ttft_ms=250.0)],
                    running_seqs=[running(4, slo_tpot_ms=40.0)])
    executor.prefill_step(snap)
    executor.decode_order(snap)
    tracer.close()
    records = read_records(path)
    assert [(r["step"], r["kind"], r["strategy"], r["order"]) for r in records] == [
        (3, "prefill", "fifo", [1]), (3, "decode", "fifo", [4]),
    ]
    assert records[0]["requests"]["1"] == {
        "request_id": "r1", "state": "waiting", "priority": 2, "tenant": "acme", "slo_ttft_ms": 250.0,
        "slo_tpot_ms": None, "computed_tokens": 0, "pending_tokens": 10, "generated_tokens": 0,
        "arrival_s": 0.0, "first_token_s": None,
    }
    assert records[1]["requests"]["4"]["slo_tpot_ms"] == 40.0
    assert records[0]["plan"]["graph"]["nodes"][0]["node_id"] == "prefill:1"
    assert started <= records[0]["wall_s"] <= records[1]["wall_s"] <= time.time()


def test_read_records_names_a_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"plan": {"step_id": -1}}\n')
    with pytest.raises(ValueError, match="trace line 1"):
        read_records(path)
