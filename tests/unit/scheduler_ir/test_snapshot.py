import pytest

from sagellm.scheduler_ir import CostEstimate, EngineSnapshot, KVMoveView, SeqState, SeqView
from tests.unit.scheduler_ir.conftest import running, snapshot, waiting


def test_seq_view_arithmetic_and_validation():
    seq = SeqView(seq_id=3, request_id="r", state="waiting", arrival_s=10.0, computed_tokens=64, pending_tokens=36)
    assert seq.state is SeqState.WAITING
    assert seq.total_tokens == 100
    assert seq.waited_s(12.5) == 2.5
    assert seq.waited_s(5.0) == 0.0
    assert running(4, generated=30, max_new_tokens=32).tokens_left == 2
    assert running(4, generated=33, max_new_tokens=32).tokens_left == 0
    with pytest.raises(ValueError, match=r"SeqView.pending_tokens: got 0; accepted: an integer >= 1 for a waiting"):
        SeqView(seq_id=1, request_id="r", state="waiting", arrival_s=0.0, pending_tokens=0)
    with pytest.raises(ValueError, match=r"SeqView.slo_ttft_ms: got -5"):
        SeqView(seq_id=1, request_id="r", state="waiting", arrival_s=0.0, slo_ttft_ms=-5)
    with pytest.raises(ValueError, match=r"SeqView.in_flight: got True; accepted: False for a waiting sequence"):
        SeqView(seq_id=1, request_id="r", state="waiting", arrival_s=0.0, in_flight=True)


def test_snapshot_checks_states_ids_and_moves():
    snap = snapshot(waiting_seqs=[waiting(1)], running_seqs=[running(2, tenant="a")])
    assert snap.seq(2).tenant == "a"
    assert snap.tenants == ("", "a")
    with pytest.raises(KeyError, match=r"no sequence 9; sequences: \[1, 2\]"):
        snap.seq(9)
    with pytest.raises(ValueError, match=r"EngineSnapshot.waiting: got \[2\]; accepted: sequences in state 'waiting'"):
        snapshot(waiting_seqs=[running(2)])
    with pytest.raises(ValueError, match=r"unique seq ids"):
        snapshot(waiting_seqs=[waiting(1)], running_seqs=[running(1)])
    with pytest.raises(ValueError, match=r"EngineSnapshot.kv_moves: got \[7\]"):
        snapshot(waiting_seqs=[waiting(1)], kv_moves=[KVMoveView("kv_onload", 7, 0, 16, (1,))])


def test_cost_estimate_lines():
    cost = CostEstimate(prefill_fixed_ms=2.0, prefill_ms_per_token=0.5, decode_fixed_ms=4.0, decode_ms_per_seq=0.25)
    assert cost.prefill_ms(100) == 52.0
    assert cost.decode_loop_ms(8) == 6.0
    assert cost.decode_loop_ms(0) == 4.25  # a batch is at least one sequence


def test_snapshot_round_trips_through_json():
    snap = snapshot(waiting_seqs=[waiting(1, slo_ttft_ms=100)], running_seqs=[running(2, first_token_s=99.0)],
                    kv_moves=[KVMoveView("kv_onload", 1, 0, 16, (4,), tier="ssd")])
    assert EngineSnapshot.from_json(snap.to_json()) == snap
