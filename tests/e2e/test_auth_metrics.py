"""API keys on every endpoint but /health (engine server and gateway), and /metrics parsed with prometheus_client."""

from __future__ import annotations

import json
import os
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.server import start_server as start_engine
from tests.e2e.test_gateway import request, start_gateway

pytestmark = pytest.mark.slow

MODEL_NAME = "tiny"
KEYS = ("k1", "k2")
CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, "temperature": 0}
COMPLETION = {"model": MODEL_NAME, "prompt": "one two three", "max_tokens": 4, "temperature": 0}
ENDPOINTS = (("POST", "/v1/chat/completions", CHAT), ("POST", "/v1/completions", COMPLETION), ("GET", "/v1/models", None), ("GET", "/metrics", None))


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("auth") / "server.log"
    running = start_engine(
        tiny_model_dir("llama"), log, "--session-len", "256", "--model-name", MODEL_NAME, "--block-size", "16",
        "--api-keys", ",".join(KEYS),
        env={"SAGELLM_CPU_MEMORY_GIB": "2", "SAGELLM_API_KEYS": ""},
    )
    yield running
    running.stop()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method, path, body", ENDPOINTS, ids=[p for _, p, _ in ENDPOINTS])
def test_engine_rejects_missing_and_wrong_keys(engine, method, path, body):
    for headers in ({}, bearer("wrong"), {"Authorization": "k1"}):
        status, response_headers, raw = request(engine.base_url + path, body, headers)
        assert status == 401, (path, headers, raw)
        error = json.loads(raw)["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert response_headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize("method, path, body", ENDPOINTS, ids=[p for _, p, _ in ENDPOINTS])
def test_engine_accepts_every_configured_key(engine, method, path, body):
    for key in KEYS:
        status, _, raw = request(engine.base_url + path, body, bearer(key))
        assert status == 200, (path, key, raw)


def test_health_is_open(engine):
    status, _, _ = request(f"{engine.base_url}/health")
    assert status == 200


def test_metrics_scrape_parses_with_sagellm_series(engine):
    from openai import OpenAI

    client = OpenAI(base_url=f"{engine.base_url}/v1", api_key=KEYS[0], timeout=120, max_retries=0)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=CHAT["messages"], max_tokens=6, temperature=0, stream=True))
    assert chunks
    status, headers, raw = request(f"{engine.base_url}/metrics", headers=bearer(KEYS[1]))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("sagellm_ttft_seconds_count", ())] >= 1
    assert 0 < samples[("sagellm_ttft_seconds_sum", ())] < 120
    latency = [v for (name, labels), v in samples.items() if name == "sagellm_request_latency_seconds_count"]
    assert sum(latency) >= 4  # the accepted-key requests above plus this stream
    assert families["sagellm_ttft_seconds"].type == "histogram"


@pytest.fixture(scope="module")
def gateway(engine, tmp_path_factory):
    running = start_gateway(
        tmp_path_factory.mktemp("auth-gateway"),
        "--engine", f"url={engine.base_url},kind=sagellm,device=cpu,api_key={KEYS[0]}",
        "--api-keys", "gk",
        env={"SAGELLM_TEST_GATEWAY_KEY": "gk", "SAGELLM_API_KEYS": ""},
    )
    yield running
    running.stop()
    if running.process.poll() is None:
        os.killpg(running.process.pid, signal.SIGKILL)


def test_gateway_requires_its_own_key(gateway):
    for method, path, body in ENDPOINTS + (("GET", "/v1/sagellm/engines", None),):
        assert request(gateway.base_url + path, body)[0] == 401, path
        assert request(gateway.base_url + path, body, bearer("k1"))[0] == 401, path  # engine keys are not gateway keys
        status, _, raw = request(gateway.base_url + path, body, bearer("gk"))
        assert status == 200, (path, raw)
    assert request(f"{gateway.base_url}/health")[0] == 200
    families = {f.name for f in text_string_to_metric_families(request(f"{gateway.base_url}/metrics", headers=bearer("gk"))[2].decode())}
    assert "sagellm_gateway_requests" in families
