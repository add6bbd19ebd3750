"""Bearer-token middleware shared by the engine server (plugin ``auth``) and the gateway."""

from __future__ import annotations

import asyncio
import json

import pytest

from sagellm.engines.lmdeploy.auth import ApiKeyAuth, parse_api_keys


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def request(app, path: str, authorization: str | None = None, kind: str = "http") -> tuple[int | str, dict]:
    sent = []

    async def send(message):
        sent.append(message)

    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    asyncio.run(app({"type": kind, "method": "GET", "path": path, "headers": headers}, None, send))
    if sent[0]["type"] == "websocket.close":
        return "closed", {}
    body = sent[1]["body"]
    return sent[0]["status"], (json.loads(body) if sent[0]["status"] != 200 else {"raw": body})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/metrics", "/openapi.json", "/health/x"])
def test_every_path_but_health_needs_a_key(path):
    app = ApiKeyAuth(ok_app, keys=["k1", "k2"])
    status, body = request(app, path)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in body["error"]["message"]
    assert request(app, path, "Bearer nope")[1]["error"]["message"] == "invalid API key"
    assert request(app, path, "Basic azE=")[0] == 401
    assert request(app, path, "Bearer k1")[0] == 200
    assert request(app, path, "bearer  k2 ")[0] == 200


def test_health_is_open_and_no_keys_means_no_auth():
    assert request(ApiKeyAuth(ok_app, keys=["k1"]), "/health")[0] == 200
    assert request(ApiKeyAuth(ok_app, keys=[]), "/v1/models")[0] == 200


def test_keys_are_read_per_request():
    keys = ["old"]
    app = ApiKeyAuth(ok_app, keys=lambda: keys)
    assert request(app, "/v1/models", "Bearer old")[0] == 200
    keys[:] = ["new"]
    assert request(app, "/v1/models", "Bearer old")[0] == 401


def test_websockets_are_closed_without_a_key():
    assert request(ApiKeyAuth(ok_app, keys=["k"]), "/ws", kind="websocket")[0] == "closed"


def test_parse_api_keys():
    assert parse_api_keys(" a, b,,a ") == ("a", "b")
    assert parse_api_keys(["x", " ", "y"]) == ("x", "y")
    assert parse_api_keys(None) == ()
