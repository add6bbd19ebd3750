"""``/metrics`` with sagellm's series on LMDeploy's OpenAI server (plugin ``metrics``).

Through patch 0001's app-hook seam this plugin

- serves ``GET /metrics`` from :mod:`sagellm.telemetry`: in multiprocess mode (what
  ``sage llm engine start`` sets up before the engine process is spawned) the samples of
  every process are merged, so counters the engine process increments show here. If
  LMDeploy mounted its own ``/metrics`` (``enable_metrics``), that mount is replaced: its
  series live in the same prometheus_client registry/directory and still appear.
- adds :class:`sagellm.telemetry.asgi.LatencyMiddleware` (TTFT/TPOT/latency, SLO misses).
"""

from __future__ import annotations

from typing import Any

from sagellm.telemetry.asgi import LatencyMiddleware, MetricsEndpoint

METRICS_PATH = "/metrics"


def add_metrics(app: Any) -> None:
    from starlette.routing import Route

    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != METRICS_PATH]
    endpoint = MetricsEndpoint()
    app.router.routes.append(Route(METRICS_PATH, endpoint=endpoint, methods=["GET"], include_in_schema=False))
    app.add_middleware(LatencyMiddleware)


def register_metrics() -> None:
    """Plugin ``metrics``: mount ``/metrics`` and the latency middleware on LMDeploy's server."""
    from lmdeploy.pytorch.plugins import register_app_hook

    register_app_hook(add_metrics)
