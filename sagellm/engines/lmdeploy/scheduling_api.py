"""Server side of scheduling: read each request's scheduling metadata, and turn a scheduler's
refusal into a clear HTTP error.

``SchedulingMiddleware`` (ASGI, installed through patch 0001's app-hook seam) reads
``priority``, ``user``, ``slo_ttft_ms``, ``slo_tpot_ms`` from the JSON body and the
``x-sagellm-*`` headers (``sagellm.core.request.RequestMetadata``; a header wins over the body).
Bad values get an HTTP 400 naming the field. The parsed metadata goes into the ASGI scope, where
patch 0004's ``request_metadata`` hook (``SagellmSchedulerHooks.request_metadata``) picks it up
for ``GenerationConfig.request_metadata`` -- and from there it travels to the engine process.

When the engine's scheduler refuses a request (``slo_aware`` admission control), the engine
ends it with an error whose text carries ``REJECT_MARKER`` and the reason; LMDeploy would send
that inside an HTTP 200 completion. The middleware holds the response start until the first
body chunk and, if it carries the marker, answers HTTP 503 with the reason instead (streaming
requests too: the refusal is always the first chunk).
"""

from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable

from sagellm.core.request import RequestMetadata

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/generate")
SCOPE_KEY = "sagellm.request_metadata"
REJECT_MARKER = "[sagellm-scheduler-rejected]"
REJECT_STATUS = 503
_REASON_RE = re.compile(re.escape(REJECT_MARKER).encode() + rb"\s*([^\"\\]*)")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def rejection_text(strategy: str, reason: str) -> str:
    """The error text the engine sends for a refused request (``reason`` must not contain quotes)."""
    return f"{REJECT_MARKER} the {strategy} scheduler rejected the request: {reason.replace(chr(34), chr(39))}"


def find_rejection(chunk: bytes) -> str | None:
    """The refusal reason carried by a response chunk, or None."""
    match = _REASON_RE.search(chunk)
    if match is None:
        return None
    return match.group(1).decode("utf-8", errors="replace").strip()


def error_body(message: str, status: int, error_type: str, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}}, ensure_ascii=False
    ).encode()


def request_metadata(raw_body: bytes, headers: list[tuple[bytes, bytes]]) -> dict | None:
    """The metadata of a generation request as a plain dict, or None when the body is not a JSON object.

    Raises:
        ValueError: a metadata field or header has a bad value (the message names it).
    """
    try:
        body = json.loads(raw_body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # the API guard (or LMDeploy) reports malformed bodies
    if not isinstance(body, dict):
        return None
    header_map = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
    return RequestMetadata.from_openai_extras(body, header_map).to_dict()


class SchedulingMiddleware:
    """See the module docstring."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        raw, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            metadata = request_metadata(raw, scope.get("headers", []))
        except ValueError as err:
            await _send(send, 400, error_body(str(err), 400, "invalid_request_error"))
            return
        if metadata is not None:
            scope[SCOPE_KEY] = metadata
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, _RejectionRewriter(send))


class _RejectionRewriter:
    """Holds ``http.response.start`` until the first body chunk shows whether the scheduler refused."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._start: Message | None = None
        self._decided = False
        self._rewritten = False

    async def __call__(self, message: Message) -> None:
        if self._rewritten:
            return
        if message["type"] == "http.response.start" and not self._decided:
            self._start = message
            return
        if message["type"] == "http.response.body" and not self._decided:
            self._decided = True
            reason = find_rejection(message.get("body", b""))
            if reason is not None:
                self._rewritten = True
                await _send(self._send, REJECT_STATUS, error_body(reason, REJECT_STATUS, "scheduler_rejected"))
                return
            if self._start is not None:
                await self._send(self._start)
        await self._send(message)


async def _send(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
