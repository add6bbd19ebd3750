"""ASGI middleware that turns bad OpenAI requests into clear HTTP 4xx answers.

LMDeploy 0.11's server answers several kinds of bad input with HTTP 200 and an error
string inside the completion (prompt longer than the session, ``max_tokens`` <= 0 silently
generating one token), or with a bare parser message (body that is not UTF-8). Clients
then treat a failure as an answer. This middleware checks the request body before the
route sees it, and rewrites the engine's in-band length error into an HTTP 400 — for
streaming responses too, by holding the response start until the first chunk is seen.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions", "/generate", "/v1/chat/interactive")
_TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_new_tokens", "request_output_len")
_ENGINE_LENGTH_ERROR = b"INPUT_LENGTH_ERROR"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def error_body(message: str, status: int, param: str | None = None) -> bytes:
    """An OpenAI-style error object."""
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": status}},
        ensure_ascii=False,
    ).encode()


def validate_body(raw: bytes) -> tuple[str, str | None] | None:
    """(message, param) describing what is wrong with a generation request body, or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return (
            f"request body is not valid UTF-8 (invalid byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "send JSON encoded as UTF-8",
            None,
        )
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        return f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}", None
    if not isinstance(body, dict):
        return f"request body must be a JSON object, got {type(body).__name__}", None
    for field in _TOKEN_LIMIT_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{field} must be a positive integer, got {value!r}", field
        if value <= 0:
            return f"{field} must be >= 1, got {value}", field
    return None


def length_error_message(chunk: bytes, session_len: int | None) -> str:
    """Explain the engine's in-band INPUT_LENGTH_ERROR, with the prompt size when the chunk has it."""
    prompt_tokens = None
    try:
        prompt_tokens = json.loads(chunk).get("usage", {}).get("prompt_tokens")
    except (ValueError, AttributeError):
        pass
    size = f" ({prompt_tokens} tokens)" if prompt_tokens else ""
    limit = f" of {session_len} tokens" if session_len else ""
    return (
        f"the prompt{size} does not fit in the session length{limit}; "
        "shorten the prompt or restart the engine with a larger --session-len"
    )


class ApiGuard:
    """Wraps an ASGI app; ``session_len`` (callable or int) only improves the length error message."""

    def __init__(self, app, session_len: int | Callable[[], int | None] | None = None):
        self.app = app
        self._session_len = session_len

    def session_len(self) -> int | None:
        return self._session_len() if callable(self._session_len) else self._session_len

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
        problem = validate_body(raw)
        if problem is not None:
            await _send_error(send, 400, *problem)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, _LengthErrorRewriter(send, self.session_len))


class _LengthErrorRewriter:
    """Holds ``http.response.start`` until the first body chunk shows whether the engine refused the prompt."""

    def __init__(self, send: Send, session_len: Callable[[], int | None]):
        self._send = send
        self._session_len = session_len
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
            chunk = message.get("body", b"")
            if _ENGINE_LENGTH_ERROR in chunk:
                self._rewritten = True
                payload = chunk.split(b"data:", 1)[-1].strip() if chunk.lstrip().startswith(b"data:") else chunk
                await _send_error(self._send, 400, length_error_message(payload, self._session_len()), None)
                return
            if self._start is not None:
                await self._send(self._start)
        await self._send(message)


async def _send_error(send: Send, status: int, message: str, param: str | None) -> None:
    body = error_body(message, status, param)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
