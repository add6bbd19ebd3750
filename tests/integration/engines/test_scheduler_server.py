"""Scheduling metadata through the real OpenAI server (engine in its own process), read back from the
scheduler's plan trace; SLO admission control answering HTTP 503 with the reason, in bounded time."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from sagellm.scheduler_ir import read_records
from tests.e2e.server import start_server

pytestmark = pytest.mark.slow

MODEL_NAME = "tiny"
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("sched-server")
    trace = work / "plans.jsonl"
    running = start_server(
        tiny_model_dir("llama"), work / "server.log", "--model-name", MODEL_NAME, "--block-size", "16",
        "--session-len", "512", "--scheduler", "slo_aware", "--sched-trace", str(trace),
    )
    running.trace = trace
    yield running
    running.stop()


def post(server, path: str, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{server.base_url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def chat(content: str = "hello there", **extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4,
            "temperature": 0, **extra}


def traced_requests(server, request_id: str, deadline_s: float = 30.0) -> list[dict]:
    """Every trace entry of ``request_id`` (the engine flushes each plan as it is made)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.trace.exists():
            found = [req for rec in read_records(server.trace) for req in rec["requests"].values()
                     if req["request_id"] == request_id]
            if found:
                return found
        time.sleep(0.2)
    raise AssertionError(f"{request_id} never reached the scheduler; log:\n{server.log()[-3000:]}")


def test_body_extras_reach_the_scheduler(server):
    status, body = post(server, "/v1/chat/completions",
                        chat(priority=3, user="acme", slo_ttft_ms=60_000, slo_tpot_ms=30_000),
                        headers={"X-Request-Id": "meta-body"})
    assert status == 200, body
    assert json.loads(body)["usage"]["completion_tokens"] == 4
    seen = traced_requests(server, "meta-body")[0]
    assert (seen["priority"], seen["tenant"], seen["slo_ttft_ms"], seen["slo_tpot_ms"]) == (3, "acme", 60000.0, 30000.0)


def test_headers_reach_the_scheduler_and_win_over_the_body(server):
    headers = {"X-Request-Id": "meta-headers", "X-SageLLM-Priority": "-2", "X-SageLLM-Tenant": "gateway-tenant",
               "X-SageLLM-SLO-TTFT-MS": "50000", "X-SageLLM-SLO-TPOT-MS": "25000"}
    status, body = post(server, "/v1/completions",
                        {"model": MODEL_NAME, "prompt": "the quick brown", "max_tokens": 3, "priority": 7, "user": "x"},
                        headers=headers)
    assert status == 200, body
    seen = traced_requests(server, "meta-headers")[0]
    assert (seen["priority"], seen["tenant"], seen["slo_ttft_ms"], seen["slo_tpot_ms"]) == (-2, "gateway-tenant", 50000.0, 25000.0)


def test_bad_metadata_is_a_400_naming_it(server):
    status, body = post(server, "/v1/chat/completions", chat(priority="high"))
    assert status == 400
    assert "body field 'priority': got 'high'" in json.loads(body)["error"]["message"]
    status, body = post(server, "/v1/chat/completions", chat(), headers={"X-SageLLM-SLO-TTFT-MS": "-1"})
    assert status == 400
    assert "header 'x-sagellm-slo-ttft-ms': got '-1'" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_unattainable_slo_is_rejected_with_a_clear_503_in_bounded_time(server, stream):
    started = time.monotonic()
    status, body = post(server, "/v1/chat/completions", chat(slo_ttft_ms=0.001, stream=stream),
                        headers={"X-Request-Id": f"too-tight-{stream}"})
    elapsed = time.monotonic() - started
    assert status == 503, body
    error = json.loads(body)["error"]
    assert error["type"] == "scheduler_rejected" and error["code"] == 503
    assert error["message"].startswith("the slo_aware scheduler rejected the request: slo_ttft_ms=0.001 cannot be met")
    assert elapsed < TIMEOUT_S
    rejected = [rec for rec in read_records(server.trace) if rec["rejected"]]
    assert any(f"too-tight-{stream}" == rec["requests"][seq]["request_id"] for rec in rejected for seq in rec["rejected"])
    # the engine keeps serving
    status, body = post(server, "/v1/chat/completions", chat())
    assert status == 200, body
