"""The gateway app against fake engines (httpx.MockTransport): routing, retry, streaming, auth, metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sagellm.control_plane.gateway import ENGINE_HEADER, PREFIX_HEADER, RETRIED_HEADER, ROUTE_HEADER, Gateway
from sagellm.control_plane.manager import ControlPlaneManager, HealthPolicy
from sagellm.core.engine_info import EngineInfo

SYSTEM = "You are a helpful assistant. " * 12  # ~350 characters: two full 128-character chunks


class FakeEngines:
    """Two OpenAI-ish engines, e1 and e2, answering with their own name."""

    def __init__(self):
        self.down: set[str] = set()
        self.requests: list[tuple[str, str, dict]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200, json={})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        body = json.loads(request.content)
        self.requests.append((host, request.url.path, dict(request.headers)))
        if body.get("stream"):
            async def events():
                for i in range(3):
                    yield f'data: {{"engine": "{host}", "i": {i}}}\n\n'.encode()
                yield b"data: [DONE]\n\n"

            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())
        return httpx.Response(200, json={"engine": host, "path": request.url.path})


@pytest.fixture()
def engines():
    return FakeEngines()


def make_gateway(engines, **kwargs) -> Gateway:
    cp = ControlPlaneManager(health=HealthPolicy(interval_s=0.05, unhealthy_after=1), prefix_chunk_chars=128)
    for name in ("e1", "e2"):
        cp.register(EngineInfo(engine_id=name, kind="sagellm", model="m", base_url=f"http://{name}", capacity=4, state="starting"))
    return Gateway(cp, transport=httpx.MockTransport(engines), stop_engines_on_exit=False, **kwargs)


def wait_healthy(client: TestClient, headers=None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError("gateway never saw a healthy engine")


def chat(client, user: str, *, system: str | None = SYSTEM, headers=None, stream=False):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return client.post("/v1/chat/completions", json={"model": "m", "messages": messages, "stream": stream}, headers=headers or {})


def test_prefix_affinity_then_load_balance(engines):
    gateway = make_gateway(engines)
    with TestClient(gateway.app) as client:
        wait_healthy(client)
        first = chat(client, "what is a cat?")
        second = chat(client, "and a dog?")
        assert first.status_code == second.status_code == 200
        assert second.headers[ENGINE_HEADER] == first.headers[ENGINE_HEADER] == first.json()["engine"]
        assert second.headers[ROUTE_HEADER] == "prefix_affinity"
        assert int(second.headers[PREFIX_HEADER]) >= 2
        served = {chat(client, f"q{i}", system=None).headers[ENGINE_HEADER] for i in range(4)}
        assert served == {"e1", "e2"}
        routes = client.get("/v1/sagellm/routes").json()["routes"]
        assert [r["reason"] for r in routes[:2]] == ["least_loaded", "prefix_affinity"]


def test_connection_error_retries_once_and_marks_unhealthy(engines):
    gateway = make_gateway(engines)
    with TestClient(gateway.app) as client:
        wait_healthy(client)
        holder = chat(client, "warm up").headers[ENGINE_HEADER]
        other = {"e1": "e2", "e2": "e1"}[holder]
        engines.down.add(holder)
        reply = chat(client, "same prefix, holder is down")
        assert reply.status_code == 200
        assert reply.headers[ENGINE_HEADER] == other
        assert reply.headers[RETRIED_HEADER] == holder
        states = {e["engine_id"]: e for e in client.get("/v1/sagellm/engines").json()["engines"]}
        assert states[holder]["state"] == "unhealthy" and "connection error" in states[holder]["last_error"]
        assert states[other]["in_flight"] == 0
        engines.down.add(other)
        failed = chat(client, "nobody is left")
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "service_unavailable"
        text = client.get("/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
        }
        assert samples[("sagellm_gateway_retries_total", (("engine", holder),))] >= 1
        assert samples[("sagellm_gateway_engine_healthy", (("engine", holder),))] == 0


def test_streaming_passes_through_chunk_by_chunk(engines):
    gateway = make_gateway(engines)
    with TestClient(gateway.app) as client:
        wait_healthy(client)
        with client.stream(
            "POST", "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            engine = response.headers[ENGINE_HEADER]
            body = b"".join(response.iter_raw())
        assert body.count(b"data:") == 4 and body.endswith(b"data: [DONE]\n\n")
        assert f'"engine": "{engine}"'.encode() in body
        assert all(e["in_flight"] == 0 for e in client.get("/v1/sagellm/engines").json()["engines"])


def test_models_union_and_request_errors(engines):
    gateway = make_gateway(engines)
    with TestClient(gateway.app) as client:
        wait_healthy(client)
        models = client.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["m"] and models["data"][0]["engines"] == ["e1", "e2"]
        unknown = client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        assert unknown.status_code == 404 and "served models: ['m']" in unknown.json()["error"]["message"]
        assert client.post("/v1/completions", content=b"{not json").status_code == 400
        assert client.post("/v1/completions", json={"prompt": "x"}).json()["error"]["param"] == "model"
        bad = chat(client, "x", headers={"x-sagellm-slo-class": "urgent"})
        assert bad.status_code == 400 and "interactive, standard, batch" in bad.json()["error"]["message"]
        bad = chat(client, "x", headers={"x-sagellm-device": "gpu"})
        assert bad.status_code == 400
        none = chat(client, "x", headers={"x-sagellm-device": "ascend"})
        assert none.status_code == 503 and "on device 'ascend'" in none.json()["error"]["message"]


def test_metadata_headers_are_forwarded(engines):
    gateway = make_gateway(engines)
    with TestClient(gateway.app) as client:
        wait_healthy(client)
        chat(client, "x", headers={"x-sagellm-priority": "-2", "x-request-id": "r-1"})
        _, _, headers = engines.requests[-1]
        assert headers["x-sagellm-priority"] == "-2" and headers["x-request-id"] == "r-1"


def test_api_keys_on_every_route_but_health(engines, monkeypatch):
    monkeypatch.delenv("SAGELLM_API_KEYS", raising=False)
    gateway = make_gateway(engines, api_keys=["gk"])
    with TestClient(gateway.app) as client:
        wait_healthy(client)
        for method, path in (("get", "/v1/models"), ("get", "/metrics"), ("get", "/v1/sagellm/engines"), ("post", "/v1/completions")):
            denied = getattr(client, method)(path)
            assert denied.status_code == 401, path
            assert denied.json()["error"]["code"] == "invalid_api_key"
            assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.post(
            "/v1/completions", json={"model": "m", "prompt": "x"}, headers={"Authorization": "Bearer gk"}
        )
        assert ok.status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer gk"}).status_code == 200
        assert client.get("/health").status_code == 200
        # the client's key is passed on to engines that have no key of their own
        assert engines.requests[-1][2]["authorization"] == "Bearer gk"
