"""Bearer-token auth on every endpoint except ``/health`` (plugin ``auth``).

LMDeploy 0.11 checks ``--api-keys`` only on the routes that declare its ``check_api_key``
dependency; others (``/metrics``, ``/docs``, ``/openapi.json``, some tool routes) stay
open. This ASGI middleware checks every HTTP and websocket request instead. The keys are
read per request from LMDeploy's ``VariableInterface.api_keys`` (what ``--api-keys``
set) together with ``SAGELLM_API_KEYS``; with neither set, auth is off.

:class:`ApiKeyAuth` imports nothing from LMDeploy, so the control-plane gateway uses it too.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

API_KEYS_ENV = "SAGELLM_API_KEYS"
OPEN_PATHS: tuple[str, ...] = ("/health",)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def parse_api_keys(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Keys from a comma-separated string or a list; blanks dropped, order kept, duplicates removed."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    keys: list[str] = []
    for item in items:
        key = str(item).strip()
        if key and key not in keys:
            keys.append(key)
    return tuple(keys)


def env_api_keys() -> tuple[str, ...]:
    return parse_api_keys(os.environ.get(API_KEYS_ENV))


def unauthorized_body(message: str) -> bytes:
    """The OpenAI-style error body of a 401."""
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    ).encode()


class ApiKeyAuth:
    """ASGI middleware requiring ``Authorization: Bearer <key>`` outside ``open_paths``.

    Args:
        app: the wrapped ASGI app.
        keys: the accepted keys, or a callable returning them (read on every request);
            an empty set disables the check.
        open_paths: exact paths served without a key.
    """

    def __init__(
        self,
        app: Any,
        keys: Sequence[str] | Callable[[], Sequence[str]],
        open_paths: Sequence[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self._keys = keys
        self.open_paths = tuple(open_paths)

    def keys(self) -> tuple[str, ...]:
        return parse_api_keys(self._keys() if callable(self._keys) else self._keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        keys = self.keys()
        if not keys:
            await self.app(scope, receive, send)
            return
        problem = _check(scope, keys)
        if problem is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem})
            return
        body = unauthorized_body(problem)
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _check(scope: Scope, keys: tuple[str, ...]) -> str | None:
    """None when the request carries one of ``keys``; else what is wrong."""
    header = None
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            header = value.decode("latin-1")
            break
    if header is None:
        return "missing API key: send the header 'Authorization: Bearer <key>'"
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed Authorization header: expected 'Bearer <key>'"
    token = token.strip().encode()
    # compare against every key so the time taken does not reveal which prefix matched
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key.encode())
    return None if matched else "invalid API key"


def lmdeploy_api_keys() -> tuple[str, ...]:
    """Keys LMDeploy's server was started with, plus ``SAGELLM_API_KEYS``."""
    from lmdeploy.serve.openai.api_server import VariableInterface

    return parse_api_keys(list(VariableInterface.api_keys or ()) + list(env_api_keys()))


def add_auth(app: Any) -> None:
    app.add_middleware(ApiKeyAuth, keys=lmdeploy_api_keys)


def register_auth() -> None:
    """Plugin ``auth``: install :class:`ApiKeyAuth` on LMDeploy's OpenAI server."""
    from lmdeploy.pytorch.plugins import register_app_hook

    register_app_hook(add_auth)
