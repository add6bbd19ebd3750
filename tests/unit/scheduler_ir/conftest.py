"""Builders of hand-made snapshots for the strategy and executor tests (fakes: no engine involved)."""

from __future__ import annotations

import pytest

from sagellm.scheduler_ir import CostEstimate, EngineSnapshot, SeqState, SeqView

# prefill: 1 ms per token, no fixed cost; decode: 10 ms per loop whatever the batch -- easy arithmetic
FLAT_COST = CostEstimate(prefill_fixed_ms=0.0, prefill_ms_per_token=1.0, decode_fixed_ms=10.0, decode_ms_per_seq=0.0)


def waiting(seq_id: int, arrival_s: float = 0.0, pending: int = 10, **kw) -> SeqView:
    return SeqView(seq_id=seq_id, request_id=f"r{seq_id}", state=SeqState.WAITING, arrival_s=arrival_s,
                   pending_tokens=pending, **kw)


def running(seq_id: int, arrival_s: float = 0.0, computed: int = 10, generated: int = 1, **kw) -> SeqView:
    kw.setdefault("max_new_tokens", 512)  # far from its end unless a test says otherwise
    return SeqView(seq_id=seq_id, request_id=f"r{seq_id}", state=SeqState.RUNNING, arrival_s=arrival_s,
                   computed_tokens=computed, pending_tokens=1, generated_tokens=generated, **kw)


def snapshot(now_s: float = 100.0, waiting_seqs=(), running_seqs=(), **kw) -> EngineSnapshot:
    kw.setdefault("cost", FLAT_COST)
    kw.setdefault("block_size", 16)
    kw.setdefault("prefill_token_budget", 4096)
    return EngineSnapshot(now_s=now_s, waiting=tuple(waiting_seqs), running=tuple(running_seqs), **kw)


@pytest.fixture
def make():
    class Make:
        pass

    m = Make()
    m.waiting, m.running, m.snapshot = waiting, running, snapshot
    return m
