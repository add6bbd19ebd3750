"""The control-plane gateway in front of two sagellm engines on the tiny model (CPU).

One gateway process starts both engines itself (``--start-engine``), so this also covers
the manager's subprocess engines, their health checks and shutdown. Tests run in file
order; the last one kills an engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagellm.control_plane.ports import SagePorts
from tests.e2e.server import STARTUP_ATTEMPTS, STARTUP_TIMEOUT_S, EngineStartupRace, hit_startup_race

pytestmark = pytest.mark.slow

MODEL_NAME = "tiny"
SYSTEM = "You are a careful assistant for the sagellm gateway test. " * 6  # ~350 chars: two 128-char chunks


@dataclass
class RunningGateway:
    process: subprocess.Popen
    base_url: str
    log_path: Path
    cache_dir: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def request(url: str, body: dict | None = None, headers: dict | None = None, timeout: float = 120) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET (no body) or POST."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def start_gateway(tmp: Path, *args: str, env: dict | None = None, wait_engines: int = 1) -> RunningGateway:
    """Run `sage gateway start` on 127.0.0.1 and wait (bounded) until ``wait_engines`` engines are healthy."""
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        try:
            return _start_gateway_once(tmp / f"attempt{attempt}", *args, env=env, wait_engines=wait_engines)
        except EngineStartupRace:
            if attempt == STARTUP_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _start_gateway_once(tmp: Path, *args: str, env: dict | None, wait_engines: int) -> RunningGateway:
    tmp.mkdir(parents=True, exist_ok=True)
    port = SagePorts.allocate()
    cache_dir = tmp / "cache"
    log_path = tmp / "gateway.log"
    command = [sys.executable, "-m", "sagellm.cli.main", "gateway", "start", "--host", "127.0.0.1", "--port", str(port), *args]
    child_env = {**os.environ, "SAGELLM_CACHE_DIR": str(cache_dir), "SAGELLM_CPU_MEMORY_GIB": "2", **(env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    gateway = RunningGateway(process, f"http://127.0.0.1:{port}", log_path, cache_dir)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    headers = {"Authorization": f"Bearer {child_env['SAGELLM_TEST_GATEWAY_KEY']}"} if "SAGELLM_TEST_GATEWAY_KEY" in child_env else {}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        try:
            status, _, body = request(f"{gateway.base_url}/v1/sagellm/engines", headers=headers, timeout=5)
            if status == 200:
                engines = json.loads(body)["engines"]
                if sum(e["state"] == "healthy" for e in engines) >= wait_engines:
                    return gateway
                if any(e["log_path"] and hit_startup_race(e["log_path"]) for e in engines):
                    gateway.stop()
                    raise EngineStartupRace(f"an engine died in LMDeploy's startup handshake:\n{gateway.log()}")
        except OSError:
            pass
        time.sleep(0.5)
    gateway.stop()
    raise TimeoutError(f"gateway engines not healthy after {STARTUP_TIMEOUT_S}s:\n{gateway.log()}")


def engines_of(gateway: RunningGateway) -> dict[str, dict]:
    status, _, body = request(f"{gateway.base_url}/v1/sagellm/engines")
    assert status == 200, body
    return {e["engine_id"]: e for e in json.loads(body)["engines"]}


def chat(gateway: RunningGateway, user: str, *, system: str | None = SYSTEM, **extra) -> tuple[int, dict, dict]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 4, "temperature": 0, **extra}
    status, headers, raw = request(f"{gateway.base_url}/v1/chat/completions", body)
    return status, headers, json.loads(raw)


@pytest.fixture(scope="module")
def gateway(tiny_model_dir, tmp_path_factory):
    model = tiny_model_dir("llama")
    spec = f"model={model},name={MODEL_NAME},device=cpu"
    running = start_gateway(
        tmp_path_factory.mktemp("gateway"),
        "--start-engine", spec, "--start-engine", spec,
        "--engine-args", "--session-len 512 --block-size 16",
        "--health-interval-s", "0.5", "--unhealthy-after", "2",
        wait_engines=2,
    )
    pids = [e["pid"] for e in engines_of(running).values()]
    yield running
    running.stop()
    for pid in pids:  # the gateway stops its engines; make sure none of them outlives the test
        try:
            if b"sagellm.cli.main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def test_two_engines_behind_one_model(gateway):
    engines = engines_of(gateway)
    assert len(engines) == 2
    assert all(e["state"] == "healthy" and e["kind"] == "sagellm" and e["device"] == "cpu" for e in engines.values())
    status, _, body = request(f"{gateway.base_url}/v1/models")
    models = json.loads(body)["data"]
    assert status == 200 and [m["id"] for m in models] == [MODEL_NAME]
    assert sorted(models[0]["engines"]) == sorted(engines)


def test_shared_prefix_goes_to_the_same_engine(gateway):
    status1, headers1, reply1 = chat(gateway, "What is a cat?")
    status2, headers2, reply2 = chat(gateway, "And what is a dog?")
    assert status1 == status2 == 200, (reply1, reply2)
    assert headers2["x-sagellm-engine"] == headers1["x-sagellm-engine"]
    assert headers2["x-sagellm-route"] == "prefix_affinity"
    assert int(headers2["x-sagellm-prefix-chunks"]) >= 2
    assert reply2["usage"]["completion_tokens"] == 4
    status, _, body = request(f"{gateway.base_url}/v1/sagellm/routes?limit=2")
    routes = json.loads(body)["routes"]
    assert [r["engine_id"] for r in routes] == [headers1["x-sagellm-engine"]] * 2


def test_requests_without_a_shared_prefix_use_both_engines(gateway):
    served = []
    for word in ("alpha", "bravo", "charlie", "delta"):
        status, headers, reply = chat(gateway, f"{word} {word}", system=None)
        assert status == 200, reply
        served.append(headers["x-sagellm-engine"])
    assert set(served) == set(engines_of(gateway))


def test_streaming_passes_through(gateway):
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused", timeout=120, max_retries=0)
    messages = [{"role": "user", "content": "the cat and the dog"}]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0, stream=True))
    assert len(chunks) >= 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    completion = client.completions.create(model=MODEL_NAME, prompt="one two three", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 4


def test_unified_client_finds_the_gateway(gateway, monkeypatch):
    from sagellm.control_plane.client import UnifiedInferenceClient

    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(gateway.cache_dir))
    monkeypatch.delenv("SAGELLM_GATEWAY_URL", raising=False)
    assert UnifiedInferenceClient.discover() == gateway.base_url
    client = UnifiedInferenceClient.create(timeout=120)
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_gateway_metrics_parse(gateway):
    status, headers, body = request(f"{gateway.base_url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    routed = families["sagellm_gateway_requests"].samples
    assert sum(s.value for s in routed if s.name.endswith("_total")) >= 7
    assert {s.labels["reason"] for s in routed} >= {"prefix_affinity", "least_loaded"}
    healthy = {s.labels["engine"]: s.value for s in families["sagellm_gateway_engine_healthy"].samples}
    assert healthy == {engine: 1.0 for engine in engines_of(gateway)}
    hits = {s.labels["outcome"]: s.value for s in families["sagellm_gateway_prefix_affinity"].samples if s.name.endswith("_total")}
    assert hits["hit"] >= 1


def test_prefix_hit_shows_in_the_engine_metrics(gateway):
    status, headers, _ = chat(gateway, "What is a bird?")
    assert status == 200 and headers["x-sagellm-route"] == "prefix_affinity"
    engine = engines_of(gateway)[headers["x-sagellm-engine"]]
    _, _, body = request(f"{engine['base_url']}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    def device(name: str) -> float:
        return sum(s.value for s in families[name].samples if s.labels.get("tier") == "device" and s.name.endswith("_total"))

    # counted in the engine process (prefix-reuse seam), merged into the server's /metrics
    assert device("sagellm_prefix_hit_tokens") > 0
    assert device("sagellm_prefix_lookup_tokens") >= device("sagellm_prefix_hit_tokens")


def test_survives_an_engine_being_killed(gateway):
    status, headers, _ = chat(gateway, "Who holds this prefix?")
    assert status == 200
    victim_id = headers["x-sagellm-engine"]
    engines = engines_of(gateway)
    survivor_id = next(e for e in engines if e != victim_id)
    os.killpg(engines[victim_id]["pid"], signal.SIGKILL)
    # the next request with the victim's prefix is routed to it, fails to connect, and is retried
    for question in ("Still there?", "Anyone?", "Hello again"):
        status, headers, reply = chat(gateway, question)
        assert status == 200, reply
        assert headers["x-sagellm-engine"] == survivor_id
    deadline = time.monotonic() + 30
    while engines_of(gateway)[victim_id]["state"] != "unhealthy" and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = engines_of(gateway)[victim_id]
    assert victim["state"] == "unhealthy" and victim["last_error"]
    status, _, body = request(f"{gateway.base_url}/health")
    assert status == 200 and json.loads(body)["healthy_engines"] == 1
    _, _, body = request(f"{gateway.base_url}/v1/models")
    assert json.loads(body)["data"][0]["engines"] == [survivor_id]
