"""``slowdown`` plugin: a deliberate, configurable slowdown, so the perf gate can prove it catches one.

With ``SAGELLM_BENCH_INJECT_DELAY_MS`` > 0 in the server's environment, every generation request
(``/v1/completions``, ``/v1/chat/completions``, ``/generate``, ``/v1/chat/interactive``) waits that many
milliseconds in an ASGI middleware before it reaches LMDeploy's route: TTFT and end-to-end latency grow
by the delay and closed-loop throughput drops. Unset or 0 (the default): nothing is installed.
Used by the perf gate's own test (tests/integration/bench/test_gate.py); never set it in production.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sagellm.engines.lmdeploy.api_guard import GENERATION_PATHS

ENV_VAR = "SAGELLM_BENCH_INJECT_DELAY_MS"


def injected_delay_s(value: str | None = None) -> float:
    """The delay in seconds from ``SAGELLM_BENCH_INJECT_DELAY_MS`` (or ``value``); 0 when unset."""
    raw = os.environ.get(ENV_VAR, "") if value is None else value
    if not raw.strip():
        return 0.0
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a number of milliseconds, got {raw!r}") from None
    if not 0 <= ms < 3_600_000:
        raise ValueError(f"{ENV_VAR} must be in [0, 3600000) ms, got {raw!r}")
    return ms / 1000.0


class InjectDelay:
    """Pure ASGI middleware: sleep ``delay_s`` before a generation request goes on."""

    def __init__(self, app, delay_s: float):
        self.app = app
        self.delay_s = delay_s

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST" and scope.get("path") in GENERATION_PATHS:
            await asyncio.sleep(self.delay_s)
        await self.app(scope, receive, send)


def register_slowdown() -> None:
    delay = injected_delay_s()
    if delay <= 0:
        return
    from lmdeploy.pytorch.plugins import register_app_hook

    register_app_hook(lambda app: app.add_middleware(InjectDelay, delay_s=delay))
