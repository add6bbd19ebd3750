"""Closed-loop and Poisson dispatch, session ordering and the streaming client, against a fake server."""

from __future__ import annotations

import asyncio

import pytest

from sagellm.bench.client import Endpoint
from sagellm.bench.loadgen import LoadPattern, run_load
from sagellm.bench.workloads import RequestSpec, Workload, WorkloadSpec
from tests.unit.bench.fakes import FakeOpenAIServer

ENDPOINT = Endpoint("http://fake", "m")


def workload(requests) -> Workload:
    return Workload(WorkloadSpec("chat"), tuple(requests), "test")


def single(n: int, max_tokens: int = 4) -> Workload:
    return workload(RequestSpec(i, f"prompt {i}", max_tokens, session=i) for i in range(n))


def run(server: FakeOpenAIServer, w: Workload, pattern: LoadPattern, **kwargs):
    return asyncio.run(run_load(ENDPOINT, w, pattern, transport=server.transport(), **kwargs))


@pytest.mark.parametrize("style,per_chunk,chunks", [("token_ids", 1, 5), ("gen_tokens", 5, 1), ("text", 1, 5)])
def test_records_count_tokens_and_chunks(style, per_chunk, chunks):
    server = FakeOpenAIServer(style=style, per_chunk=per_chunk, cached_tokens=2)
    records, wall = run(server, single(3, max_tokens=5), LoadPattern("closed", 1))
    assert len(records) == 3 and wall > 0
    for r in records:
        assert r.ok and r.output_tokens == 5 and r.chunks == chunks and len(r.itl_s) == chunks - 1
        assert r.prompt_tokens == 2 and r.cached_tokens == 2 and r.finish_reason is None
        assert r.ttft_s is not None and r.e2e_s >= r.ttft_s
    body = server.bodies[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] is True and body["temperature"] == 0 and body["max_tokens"] == 5


def test_without_usage_tokens_are_counted_from_chunks():
    records, _ = run(FakeOpenAIServer(style="gen_tokens", per_chunk=2, usage=False), single(1, 5), LoadPattern("closed", 1))
    assert records[0].output_tokens == 5 and records[0].chunks == 3 and records[0].prompt_tokens is None


def test_http_errors_are_recorded_not_raised():
    records, _ = run(FakeOpenAIServer(status=503), single(2), LoadPattern("closed", 2))
    assert [r.ok for r in records] == [False, False]
    assert records[0].error.startswith("HTTP 503: ")


def test_closed_loop_respects_concurrency_and_order():
    server = FakeOpenAIServer()
    records, _ = run(server, single(10), LoadPattern("closed", 3))
    assert server.peak_in_flight == 3
    assert server.arrivals == [f"prompt {i}" for i in range(10)]
    assert sorted(r.id for r in records) == list(range(10))


def test_sessions_run_their_turns_in_order_and_interleave():
    reqs = [RequestSpec(i, f"s{s} t{t}", 2, session=s, turn=t) for i, (t, s) in enumerate((t, s) for t in range(3) for s in range(2))]
    server = FakeOpenAIServer()
    run(server, workload(reqs), LoadPattern("closed", 4))
    # only two sessions: at most two requests can be in flight although four clients exist
    assert server.peak_in_flight == 2
    for s in range(2):
        for t in (1, 2):
            assert server.completions.index(f"s{s} t{t - 1}") < server.arrivals.index(f"s{s} t{t}")
    assert server.arrivals[:2] == ["s0 t0", "s1 t0"]


@pytest.mark.parametrize("cap", [1, 2])
def test_poisson_sends_everything_with_a_cap_on_in_flight(cap):
    server = FakeOpenAIServer()
    records, _ = run(server, single(12), LoadPattern("poisson", rate=10_000.0, max_inflight=cap, seed=1))
    assert len(records) == 12 and all(r.ok for r in records) and server.peak_in_flight == cap


def test_load_pattern_validation():
    with pytest.raises(ValueError, match="rate > 0"):
        LoadPattern("poisson")
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        LoadPattern("closed", 0)
    assert LoadPattern("closed", 8).describe() == "closed loop, concurrency 8"
