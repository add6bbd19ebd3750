"""The `slowdown` plugin's delay parsing and its middleware (which requests wait; no timing asserted)."""

from __future__ import annotations

import asyncio

import pytest

from sagellm.engines.lmdeploy import slowdown


def test_delay_from_the_environment(monkeypatch):
    monkeypatch.delenv(slowdown.ENV_VAR, raising=False)
    assert slowdown.injected_delay_s() == 0.0
    assert slowdown.injected_delay_s("250") == 0.25 and slowdown.injected_delay_s(" ") == 0.0
    with pytest.raises(ValueError, match="number of milliseconds"):
        slowdown.injected_delay_s("fast")
    with pytest.raises(ValueError, match=r"\[0, 3600000\)"):
        slowdown.injected_delay_s("-5")


def test_middleware_delays_only_generation_posts(monkeypatch):
    slept: list[float] = []

    async def fake_sleep(seconds):
        slept.append(seconds)

    monkeypatch.setattr(slowdown.asyncio, "sleep", fake_sleep)
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    middleware = slowdown.InjectDelay(app, delay_s=0.3)
    for method, path in (("POST", "/v1/completions"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/health")):
        asyncio.run(middleware({"type": "http", "method": method, "path": path}, None, None))
    assert slept == [0.3, 0.3]
    assert seen == ["/v1/completions", "/v1/models", "/v1/chat/completions", "/health"]


def test_nothing_installed_without_the_variable(monkeypatch):
    monkeypatch.delenv(slowdown.ENV_VAR, raising=False)
    slowdown.register_slowdown()  # no lmdeploy import, no app hook
