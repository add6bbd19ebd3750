"""The latency middleware and the /metrics endpoint, driven as plain ASGI apps."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sagellm.telemetry.asgi import LatencyMiddleware, MetricsEndpoint
from sagellm.telemetry.metrics import SageMetrics


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def sse(content: str, usage: dict | None = None) -> bytes:
    event = {"choices": [{"index": 0, "delta": {"content": content}}], "usage": usage}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def streaming_app(clock: Clock, chunks: list[tuple[float, bytes]], status: int = 200):
    async def app(scope, receive, send):
        body = await receive()
        assert json.loads(body["body"])["model"] == "m"  # the middleware replays the body
        await send({"type": "http.response.start", "status": status, "headers": []})
        for advance, chunk in chunks:
            clock.now += advance
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def call(app, body: dict, headers: list[tuple[bytes, bytes]] = (), path: str = "/v1/chat/completions") -> list[dict]:
    sent = []
    raw = json.dumps(body).encode()
    messages = [{"type": "http.request", "body": raw[:5], "more_body": True}, {"type": "http.request", "body": raw[5:]}]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    return sent


def scraped(registry) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }


@pytest.fixture()
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr("sagellm.telemetry.asgi.time.perf_counter", c)
    return c


def test_streaming_ttft_tpot_and_slo_misses(clock):
    registry = CollectorRegistry()
    chunks = [
        (0.25, sse("a")),                      # first output 0.25 s after the request
        (0.05, sse("b") + sse("c")),           # two events in one chunk
        (0.05, sse("")),                        # no output: not a token
        (0.0, sse("", usage={"completion_tokens": 5})),
        (0.0, b"data: [DONE]\n\n"),
    ]
    app = LatencyMiddleware(streaming_app(clock, chunks), SageMetrics(registry))
    sent = call(app, {"model": "m", "stream": True, "slo_ttft_ms": 100, "slo_tpot_ms": 100})
    assert [m["type"] for m in sent][:2] == ["http.response.start", "http.response.body"]
    got = scraped(registry)
    assert got[("sagellm_ttft_seconds_sum", ())] == pytest.approx(0.25)
    # last output at +0.30, first at +0.25, usage says 5 tokens -> 0.05 / 4
    assert got[("sagellm_tpot_seconds_sum", ())] == pytest.approx(0.0125)
    assert got[("sagellm_slo_misses_total", (("kind", "ttft"),))] == 1
    assert ("sagellm_slo_misses_total", (("kind", "tpot"),)) not in got
    assert got[("sagellm_request_latency_seconds_count", (("endpoint", "/v1/chat/completions"),))] == 1


def test_header_slo_and_events_stand_in_for_tokens(clock):
    registry = CollectorRegistry()
    chunks = [(0.01, sse("a")), (0.3, sse("b")), (0.3, sse("c"))]
    app = LatencyMiddleware(streaming_app(clock, chunks), SageMetrics(registry))
    call(app, {"model": "m", "stream": True}, headers=[(b"x-sagellm-slo-tpot-ms", b"200")])
    got = scraped(registry)
    assert got[("sagellm_tpot_seconds_sum", ())] == pytest.approx(0.3)
    assert got[("sagellm_slo_misses_total", (("kind", "tpot"),))] == 1


def test_non_streaming_and_errors(clock):
    registry = CollectorRegistry()
    metrics = SageMetrics(registry)
    call(LatencyMiddleware(streaming_app(clock, [(0.5, b'{"ok": 1}')]), metrics), {"model": "m"})
    call(LatencyMiddleware(streaming_app(clock, [(0.5, b"{}")], status=400), metrics), {"model": "m", "stream": True})
    got = scraped(registry)
    assert got[("sagellm_request_latency_seconds_sum", (("endpoint", "/v1/chat/completions"),))] == pytest.approx(0.5)
    assert got[("sagellm_request_latency_seconds_count", (("endpoint", "/v1/chat/completions"),))] == 1
    assert ("sagellm_ttft_seconds_count", ()) not in got


def test_other_paths_pass_through_untouched(clock):
    registry = CollectorRegistry()
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    asyncio.run(LatencyMiddleware(app, SageMetrics(registry))({"type": "http", "method": "GET", "path": "/v1/models"}, None, None))
    assert seen == ["/v1/models"] and generate_latest(registry) == b""


def test_metrics_endpoint_renders_a_registry():
    registry = CollectorRegistry()
    SageMetrics(registry).prefix_hit_tokens("device", 3)
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(MetricsEndpoint(lambda: registry)({"type": "http", "method": "GET", "path": "/metrics"}, None, send))
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/plain")
    families = {f.name: f for f in text_string_to_metric_families(sent[1]["body"].decode())}
    assert families["sagellm_prefix_hit_tokens"].samples[0].value == 3
