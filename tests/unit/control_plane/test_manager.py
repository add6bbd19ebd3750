"""ControlPlaneManager: registration, accounting, health transitions, prefix bookkeeping."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from sagellm.control_plane import manager as manager_module
from sagellm.control_plane.manager import ControlPlaneManager, HealthPolicy
from sagellm.control_plane.routing import RouteRequest
from sagellm.core.engine_info import EngineInfo, EngineState


def info(engine_id, state="healthy", capacity=4):
    return EngineInfo(engine_id=engine_id, kind="openai", model="m", base_url=f"http://{engine_id}", capacity=capacity, state=state)


@pytest.fixture()
def cp():
    m = ControlPlaneManager(health=HealthPolicy(unhealthy_after=2, startup_timeout_s=60))
    m.register(info("a"))
    m.register(info("b"))
    return m


def test_register_rejects_duplicates_and_missing_url(cp):
    with pytest.raises(ValueError, match="engine 'a' is already registered"):
        cp.register(info("a"))
    with pytest.raises(ValueError, match="base_url"):
        cp.register(EngineInfo(engine_id="c", kind="sagellm", model="m"))
    with pytest.raises(KeyError, match="unknown engine 'zz'; registered: \\['a', 'b'\\]"):
        cp.engine("zz")


def test_route_counts_in_flight_and_alternates(cp):
    first = cp.route(RouteRequest(model="m"))
    second = cp.route(RouteRequest(model="m"))
    assert {first.engine_id, second.engine_id} == {"a", "b"}
    loads = {s.info.engine_id: s.in_flight for s in cp.engines()}
    assert loads == {"a": 1, "b": 1}
    cp.release("a")
    cp.release("a")  # never below zero
    assert {s.info.engine_id: s.in_flight for s in cp.engines()}["a"] == 0
    assert {s.info.engine_id: s.served for s in cp.engines()} == {"a": 1, "b": 1}


def test_prefix_affinity_and_forgetting_on_failure(cp):
    hashes = ("h1", "h2")
    first = cp.route(RouteRequest(model="m", prefix_hashes=hashes))
    cp.release(first.engine_id)
    again = cp.route(RouteRequest(model="m", prefix_hashes=hashes + ("h3",)))
    assert (again.engine_id, again.reason, again.matched_chunks) == (first.engine_id, "prefix_affinity", 2)
    cp.release(again.engine_id)
    cp.mark_unhealthy(first.engine_id, "connection refused")
    moved = cp.route(RouteRequest(model="m", prefix_hashes=hashes))
    assert moved.engine_id != first.engine_id and moved.reason == "least_loaded"
    status = {s.info.engine_id: s for s in cp.engines()}[first.engine_id]
    assert status.info.state is EngineState.UNHEALTHY and status.last_error == "connection refused"


def test_health_transitions(cp):
    assert cp.record_health("a", False, "timeout") is EngineState.HEALTHY  # 1 of 2
    assert cp.record_health("a", False, "timeout") is EngineState.UNHEALTHY
    assert cp.models() == {"m": ("b",)}
    assert cp.record_health("a", True, models=("m", "m2")) is EngineState.HEALTHY
    assert cp.models() == {"m": ("a", "b"), "m2": ("a",)}
    cp.register(info("s", state="starting"))
    assert cp.record_health("s", False, "refused") is EngineState.STARTING  # starting engines get time
    assert cp.record_health("s", True) is EngineState.HEALTHY
    assert cp.healthy_count() == 3


def test_a_dead_process_is_unhealthy_at_once():
    cp = ControlPlaneManager()
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait(timeout=30)
    cp.register(info("dead", state="starting"), process=process)
    assert cp.record_health("dead", False, "refused") is EngineState.UNHEALTHY
    assert cp.engines()[0].last_error == "process exited with code 3"


def test_startup_timeout(monkeypatch):
    cp = ControlPlaneManager(health=HealthPolicy(startup_timeout_s=5))
    cp.register(info("slow", state="starting"))
    real = manager_module.time.monotonic
    monkeypatch.setattr(manager_module.time, "monotonic", lambda: real() + 10)
    assert cp.record_health("slow", False, "refused") is EngineState.UNHEALTHY
    assert "not healthy after 5s" in cp.engines()[0].last_error


def test_check_health_over_http():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}, {"id": "extra"}]})

    cp = ControlPlaneManager(health=HealthPolicy(unhealthy_after=1))
    cp.register(info("up", state="starting"))
    cp.register(info("down"))

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await cp.check_health(client)

    import asyncio

    assert asyncio.run(run()) == {"up": EngineState.HEALTHY, "down": EngineState.UNHEALTHY}
    assert cp.models() == {"extra": ("up",), "m": ("up",)}
    assert "ConnectError" in {s.info.engine_id: s for s in cp.engines()}["down"].last_error


def test_register_endpoint(monkeypatch):
    monkeypatch.setattr(manager_module, "_fetch_models_sync", lambda url, key, timeout: ("qwen", "llama"))
    cp = ControlPlaneManager()
    e = cp.register_endpoint("http://10.0.0.1:8000/v1/", kind="vllm", device="cuda", capacity=32)
    assert (e.engine_id, e.base_url, e.model, e.state, e.capacity) == (
        "vllm-10.0.0.1:8000", "http://10.0.0.1:8000", "qwen", EngineState.HEALTHY, 32
    )
    assert cp.models() == {"llama": ("vllm-10.0.0.1:8000",), "qwen": ("vllm-10.0.0.1:8000",)}
    with pytest.raises(ValueError, match="does not serve model 'mistral'"):
        cp.register_endpoint("http://10.0.0.2:8000", model="mistral")

    def unreachable(url, key, timeout):
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(manager_module, "_fetch_models_sync", unreachable)
    e = cp.register_endpoint("http://10.0.0.3:8000", model="qwen", engine_id="later")
    assert e.state is EngineState.STARTING
    assert "ConnectError" in {s.info.engine_id: s for s in cp.engines()}["later"].last_error
    with pytest.raises(ValueError, match="pass model= explicitly"):
        cp.register_endpoint("http://10.0.0.4:8000")


def test_unknown_policy_lists_names():
    with pytest.raises(KeyError, match="valid names: \\['least_loaded', 'prefix_affinity', 'round_robin'\\]"):
        ControlPlaneManager(policy="fastest")


def test_health_policy_validates():
    with pytest.raises(ValueError, match="HealthPolicy.unhealthy_after: got 0"):
        HealthPolicy(unhealthy_after=0)
