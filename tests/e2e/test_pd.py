"""Prefill/decode disaggregation end to end: a prefill engine, two decode engines and the PD router.

Greedy outputs through the router equal transformers' (and a decode engine computing alone,
i.e. colocated); the decode engines really pulled the prompts' KV (exact remote-hit token
counts); a transfer corrupted in the prefill engine's shared memory is recomputed; a decode
engine killed mid-request is replaced by the other; a stream broken mid-answer ends with an
error event. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagellm.control_plane.pd_router import PDRouter, PDRouterConfig
from sagellm.control_plane.ports import SagePorts
from tests.e2e.server import start_server
from tests.e2e.test_gateway import request
from tests.integration.engines.oracle import transformers_greedy

pytestmark = pytest.mark.slow

BLOCK = 16
COMMON = ("--session-len", "1024", "--model-name", "tiny", "--block-size", str(BLOCK))
ENV = {"SAGELLM_CPU_MEMORY_GIB": "2"}


class RouterThread:
    """The PD router served by uvicorn on a thread of the test process."""

    def __init__(self, config: PDRouterConfig) -> None:
        import uvicorn

        self.router = PDRouter(config)
        self.port = SagePorts.allocate()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.router.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "router did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("pd")
    model = tiny_model_dir("llama")
    kv_port = SagePorts.allocate()
    peer = f"127.0.0.1:{kv_port}"
    started = []
    try:
        prefill = start_server(model, logs / "prefill.log", *COMMON, "--role", "prefill", "--pd-listen", peer,
                               "--pd-buffer-gib", "0.0625", env=ENV)
        started.append(prefill)
        decodes = []
        for name in ("decode1", "decode2"):
            decodes.append(start_server(model, logs / f"{name}.log", *COMMON, "--role", "decode", "--pd-peers", peer, env=ENV))
            started.append(decodes[-1])
        router = RouterThread(PDRouterConfig(prefill=(prefill.base_url,), decode=tuple(d.base_url for d in decodes),
                                             request_timeout_s=120.0, health_interval_s=1.0))
        yield {"model": model, "prefill": prefill, "decodes": decodes, "router": router}
        router.stop()
    finally:
        for server in started:
            if server.process.poll() is None:
                server.stop()


def prompts(count: int, lengths, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, 4000) for _ in range(lengths[i % len(lengths)])] for i in range(count)]


def generate(base_url: str, ids: list[int], max_tokens: int, timeout: float = 120) -> tuple[int, dict, dict]:
    status, headers, body = request(f"{base_url}/generate",
                                    {"input_ids": ids, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True},
                                    timeout=timeout)
    return status, headers, json.loads(body)


def counter(base_url: str, family: str, **labels: str) -> float:
    _, _, body = request(f"{base_url}/metrics")
    total = 0.0
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name != family:
            continue
        for sample in fam.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def remote_hits(cluster) -> float:
    return sum(counter(d.base_url, "sagellm_prefix_hit_tokens", tier="remote") for d in cluster["decodes"])


def test_pd_greedy_output_equals_transformers_and_colocated(cluster):
    router = cluster["router"]
    batch = prompts(4, (33, 50, 77, 100), seed=1)
    alone = prompts(2, (60, 45), seed=2)
    reference = transformers_greedy(cluster["model"], batch + alone, 16)
    before = remote_hits(cluster)
    engines_used = set()
    for ids, expected in zip(batch, reference):
        status, headers, body = generate(router.base_url, ids, 16)
        assert status == 200, body
        assert body["output_ids"] == expected
        assert headers["x-sagellm-prefill-engine"] == cluster["prefill"].base_url
        engines_used.add(headers["x-sagellm-decode-engine"])
    # every full block of each prompt but the one holding its last token came over the transport
    assert remote_hits(cluster) - before == sum(BLOCK * ((len(ids) - 1) // BLOCK) for ids in batch)
    assert engines_used == {d.base_url for d in cluster["decodes"]}
    # colocated: a decode engine asked directly has nothing to pull and computes the whole prompt
    before = remote_hits(cluster)
    for ids, expected in zip(alone, reference[len(batch):]):
        status, _, body = generate(cluster["decodes"][0].base_url, ids, 16)
        assert status == 200 and body["output_ids"] == expected
    assert remote_hits(cluster) == before


def test_pd_chat_streaming_equals_non_streaming(cluster):
    router = cluster["router"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell me about the river and the old mill " * 6}],
            "max_tokens": 24, "temperature": 0}
    status, _, plain = request(f"{router.base_url}/v1/chat/completions", body)
    assert status == 200, plain
    text = json.loads(plain)["choices"][0]["message"]["content"]
    status, headers, streamed = request(f"{router.base_url}/v1/chat/completions", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    pieces = []
    for line in streamed.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            event = json.loads(line[6:])
            pieces.append(event["choices"][0]["delta"].get("content") or "")
    assert "".join(pieces) == text


def test_bad_request_is_answered_by_the_prefill_engine(cluster):
    status, _, body = request(f"{cluster['router'].base_url}/v1/chat/completions",
                              {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1})
    assert status == 400, body


def _prefill_segments(prefill) -> list[Path]:
    """The prefill engine's transfer-buffer memory files, as /proc/<pid>/fd/<fd> paths."""
    found = []
    for process in [psutil.Process(prefill.process.pid), *psutil.Process(prefill.process.pid).children(recursive=True)]:
        fd_dir = Path(f"/proc/{process.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(f"/memfd:sagellm-kv-{process.pid}"):
                found.append(fd)
    # mmap keeps a duplicate descriptor of the file it maps: one memory file per inode
    return list({fd.stat().st_ino: fd for fd in found}.values())


def _flip(segment: Path) -> None:
    data = np.memmap(segment, dtype=np.uint8, mode="r+")
    np.bitwise_xor(data, 0x5A, out=data)
    data.flush()
    del data


def test_corrupted_transfer_is_recomputed_not_used(cluster):
    prefill, decode = cluster["prefill"], cluster["decodes"][0]
    (ids,) = prompts(1, (70,), seed=3)
    (expected,) = transformers_greedy(cluster["model"], [ids], 12)
    status, _, _ = generate(prefill.base_url, ids, 1)
    assert status == 200
    segments = _prefill_segments(prefill)
    assert len(segments) == 1, segments
    failed_before = counter(decode.base_url, "sagellm_transport_resent_chunks", outcome="failed")
    hits_before = remote_hits(cluster)
    _flip(segments[0])  # every byte of the exported KV is now wrong in shared memory
    try:
        status, _, body = generate(decode.base_url, ids, 12)
    finally:
        _flip(segments[0])  # restore (xor twice) for the other tests
    assert status == 200 and body["output_ids"] == expected
    assert counter(decode.base_url, "sagellm_transport_resent_chunks", outcome="failed") > failed_before
    assert remote_hits(cluster) == hits_before  # nothing corrupted was used


def _wait_phase(router: PDRouter, phase: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for flight in list(router.requests.values()):
            if flight.phase == phase and flight.decode:
                return vars(flight)
        time.sleep(0.02)
    raise AssertionError(f"no request reached phase {phase!r} within {timeout_s}s")


def _kill(server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def test_decode_engine_killed_mid_request_is_retried_on_the_other(cluster):
    router = cluster["router"]
    (ids,) = prompts(1, (40,), seed=4)
    (expected,) = transformers_greedy(cluster["model"], [ids], 300)
    result = {}

    def call():
        result["response"] = generate(router.base_url, ids, 300, timeout=180)

    started = time.monotonic()
    thread = threading.Thread(target=call)
    thread.start()
    flight = _wait_phase(router.router, "decode")
    time.sleep(0.2)  # let it generate a while
    victim = next(d for d in cluster["decodes"] if d.base_url == flight["decode"])
    _kill(victim)
    thread.join(180)
    assert not thread.is_alive(), "the request hung"
    status, headers, body = result["response"]
    assert status == 200, body
    assert headers.get("x-sagellm-retried-from") == victim.base_url
    assert headers["x-sagellm-decode-engine"] != victim.base_url
    assert body["output_ids"] == expected
    assert time.monotonic() - started < 180


def test_stream_broken_mid_answer_ends_with_an_error_then_503(cluster):
    router = cluster["router"]
    alive = [d for d in cluster["decodes"] if d.process.poll() is None]
    assert len(alive) == 1
    body = {"model": "tiny", "prompt": "once upon a time " * 10, "max_tokens": 900, "temperature": 0,
            "ignore_eos": True, "stream": True}
    req = urllib.request.Request(f"{router.base_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    started = time.monotonic()
    events = []
    with urllib.request.urlopen(req, timeout=120) as response:
        killed = False
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            if not killed:  # right after the first event: most of the 900 tokens are still to come
                _kill(alive[0])
                killed = True
    assert time.monotonic() - started < 120
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["code"] == "engine_failed"
    status, _, answer = request(f"{router.base_url}/v1/completions", {**body, "stream": False}, timeout=60)
    assert status == 503, answer
    assert "no healthy decode engine" in json.loads(answer)["error"]["message"]
