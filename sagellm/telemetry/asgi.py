"""ASGI pieces a server mounts: the ``/metrics`` endpoint and the TTFT/TPOT middleware.

Framework-free (plain ASGI callables), so both LMDeploy's FastAPI app (through the
``metrics`` plugin) and the control-plane gateway use them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sagellm.telemetry.metrics import SageMetrics, metrics as default_metrics
from sagellm.telemetry.multiproc import CONTENT_TYPE, render

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GENERATION_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")


class MetricsEndpoint:
    """ASGI app answering any request with the Prometheus exposition of ``registry()``.

    Args:
        registry: returns the registry to render; None = all processes of this server
            (``multiproc.exposition_registry``).
    """

    def __init__(self, registry: Callable[[], Any] | None = None) -> None:
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = render(self._registry() if self._registry is not None else None)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class LatencyMiddleware:
    """Measures generation requests as the client sees them at this server.

    For every ``POST`` to ``paths`` answered with HTTP 2xx it observes the end-to-end
    latency. For streaming requests (``"stream": true``) it also observes TTFT (request
    start to the first event carrying output) and TPOT ((last output - first output) /
    (completion tokens - 1), tokens from the stream's ``usage`` when present, else output
    events), and counts an SLO miss when the request carried
    ``slo_ttft_ms`` / ``slo_tpot_ms`` (body field or ``x-sagellm-slo-*`` header) and the
    measurement exceeds it. Non-streaming requests have no first-token time to measure.
    """

    def __init__(self, app: Any, metrics: SageMetrics | None = None, paths: tuple[str, ...] = GENERATION_PATHS):
        self.app = app
        self.metrics = metrics or default_metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        stream, slo_ttft_ms, slo_tpot_ms = _request_facts(raw, scope)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        state = _StreamState()

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.status = message["status"]
            elif message["type"] == "http.response.body" and stream:
                state.feed(message.get("body", b""), time.perf_counter())
            await send(message)

        await self.app(scope, replay, watch)
        if not 200 <= state.status < 300:
            return
        self.metrics.observe_request_latency(scope["path"], time.perf_counter() - start)
        if not stream or state.first is None:
            return
        ttft = state.first - start
        self.metrics.observe_ttft(ttft)
        if slo_ttft_ms is not None and ttft * 1000 > slo_ttft_ms:
            self.metrics.slo_miss("ttft")
        tokens = state.completion_tokens or state.events
        if tokens >= 2 and state.last is not None:
            tpot = (state.last - state.first) / (tokens - 1)
            self.metrics.observe_tpot(tpot)
            if slo_tpot_ms is not None and tpot * 1000 > slo_tpot_ms:
                self.metrics.slo_miss("tpot")


class _StreamState:
    """Follows a server-sent-event stream: when output first and last arrived, and how much.

    An event counts as output when its first choice carries non-empty ``delta.content`` or
    ``text``. ``completion_tokens`` comes from a ``usage`` object when the server sends one
    (``stream_options.include_usage``); otherwise output events stand in for tokens.
    """

    def __init__(self) -> None:
        self.status = 0
        self.first: float | None = None
        self.last: float | None = None
        self.events = 0
        self.completion_tokens = 0
        self._partial = b""

    def feed(self, chunk: bytes, now: float) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            usage = event.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                self.completion_tokens = usage["completion_tokens"]
            if _has_output(event):
                if self.first is None:
                    self.first = now
                self.last = now
                self.events += 1


def _has_output(event: dict[str, Any]) -> bool:
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict) and delta.get("content"):
        return True
    return bool(choice.get("text"))


def _request_facts(raw: bytes, scope: Scope) -> tuple[bool, float | None, float | None]:
    """(stream?, slo_ttft_ms, slo_tpot_ms) of a request; malformed input yields no facts."""
    from sagellm.core.request import RequestMetadata

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False, None, None
    if not isinstance(body, dict):
        return False, None, None
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    try:
        meta = RequestMetadata.from_openai_extras(body, headers, request_id="metrics")
    except ValueError:
        return body.get("stream") is True, None, None
    return body.get("stream") is True, meta.slo_ttft_ms, meta.slo_tpot_ms
