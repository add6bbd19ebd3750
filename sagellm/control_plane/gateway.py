"""One OpenAI-compatible endpoint in front of every engine of a ``ControlPlaneManager``.

Routes:

==============================  ==========================================================
``POST /v1/chat/completions``   routed (``manager.route``) and forwarded; ``"stream": true``
``POST /v1/completions``        responses pass through chunk by chunk
``GET /v1/models``              the union of the healthy engines' models
``GET /health``                 200 while at least one engine is healthy, else 503 (open)
``GET /metrics``                the gateway's Prometheus series (``GATEWAY_SERIES``)
``GET /v1/sagellm/engines``     every engine: state, device, models, load, last error
``GET /v1/sagellm/routes``      the most recent routing decisions
==============================  ==========================================================

Each forwarded response carries ``x-sagellm-engine`` (the engine that served it),
``x-sagellm-route`` (the policy's reason) and ``x-sagellm-prefix-chunks``. Requests may
carry ``x-sagellm-device`` (a device kind the engine must run on), ``x-sagellm-slo-class``
(interactive, standard, batch) and the ``RequestMetadata`` fields, which are forwarded as
``x-sagellm-*`` headers. When an engine cannot be reached (connection refused or dropped
before it answered) the gateway marks it unhealthy and retries the request once on
another healthy engine. With API keys configured every route except ``/health`` requires
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import Request

from sagellm.control_plane.manager import ControlPlaneManager
from sagellm.control_plane.routing import SLO_CLASSES, RouteDecision, RouteRequest, prefix_chunk_hashes, render_prompt_text
from sagellm.core.capability import DEVICE_KINDS
from sagellm.core.request import RequestMetadata
from sagellm.engines.lmdeploy.auth import ApiKeyAuth, env_api_keys, parse_api_keys
from sagellm.telemetry.metrics import GatewayMetrics
from sagellm.telemetry.multiproc import CONTENT_TYPE, render

logger = logging.getLogger("sagellm.gateway")

ENGINE_HEADER = "x-sagellm-engine"
ROUTE_HEADER = "x-sagellm-route"
PREFIX_HEADER = "x-sagellm-prefix-chunks"
RETRIED_HEADER = "x-sagellm-retried-from"
DEVICE_HEADER = "x-sagellm-device"
SLO_CLASS_HEADER = "x-sagellm-slo-class"
GENERATION_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions")
_FORWARDED_HEADERS = ("content-type", "accept", "user-agent")


@dataclass(frozen=True)
class RouteRecord:
    """One routing outcome, as ``/v1/sagellm/routes`` shows it."""

    time: float
    request_id: str
    path: str
    model: str
    engine_id: str | None
    reason: str
    matched_chunks: int
    retried_from: tuple[str, ...]
    status: int


class Gateway:
    """The gateway app (``self.app``, an ASGI/FastAPI app) over ``manager``.

    Args:
        manager: the engines and routing.
        api_keys: bearer keys required on every route but ``/health`` (``SAGELLM_API_KEYS``
            is added to them); empty = no auth.
        request_timeout_s: how long one forwarded request may take.
        connect_timeout_s: how long connecting to an engine may take.
        stop_engines_on_exit: stop the engines the manager started when the app shuts down.
        history: routing decisions kept for ``/v1/sagellm/routes``.
    """

    def __init__(
        self,
        manager: ControlPlaneManager,
        *,
        api_keys: Sequence[str] = (),
        request_timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        stop_engines_on_exit: bool = True,
        history: int = 256,
        transport: Any = None,
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.manager = manager
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        if manager.metrics is None:
            manager.metrics = self.metrics
        self.api_keys = parse_api_keys(list(api_keys) + list(env_api_keys()))
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.stop_engines_on_exit = stop_engines_on_exit
        self.routes: deque[RouteRecord] = deque(maxlen=history)
        self._transport = transport
        self.client: Any = None
        self.started_at = time.time()
        self.app = self._build_app()

    # ------------------------------------------------------------ app

    def _build_app(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, Response

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            import httpx

            self.client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s),
                transport=self._transport,
            )
            task = asyncio.create_task(self._health_loop())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await self.client.aclose()
                if self.stop_engines_on_exit:
                    await asyncio.to_thread(self.manager.shutdown)

        app = FastAPI(title="sagellm gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(ApiKeyAuth, keys=self.api_keys)

        @app.get("/health")
        async def health() -> Any:
            healthy = self.manager.healthy_count()
            total = len(self.manager.engines())
            body = {"status": "ok" if healthy else "no healthy engine", "healthy_engines": healthy, "engines": total}
            return JSONResponse(body, status_code=200 if healthy else 503)

        @app.get("/v1/models")
        async def models() -> Any:
            data = [
                {"id": name, "object": "model", "created": int(self.started_at), "owned_by": "sagellm", "engines": list(ids)}
                for name, ids in self.manager.models().items()
            ]
            return {"object": "list", "data": data}

        @app.get("/metrics")
        async def metrics() -> Any:
            return Response(render(self.registry), media_type=CONTENT_TYPE)

        @app.get("/v1/sagellm/engines")
        async def engines() -> Any:
            return {"policy": self.manager.policy_name, "engines": [e.to_dict() for e in self.manager.engines()]}

        @app.get("/v1/sagellm/routes")
        async def routes(limit: int = 50) -> Any:
            recent = list(self.routes)[-max(1, limit):]
            return {"routes": [asdict(r) for r in recent]}

        async def generation(request: Request) -> Any:
            return await self.forward(request)

        for path in GENERATION_PATHS:
            app.add_api_route(path, generation, methods=["POST"])
        return app

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.manager.check_health(self.client)
            except Exception:  # keep checking; one bad round must not stop the loop
                logger.exception("health check round failed")
            await asyncio.sleep(self.manager.health.interval_s)

    # ------------------------------------------------------------ forwarding

    async def forward(self, request: Request) -> Any:
        import httpx
        from fastapi.responses import Response, StreamingResponse

        path = request.url.path
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object", "invalid_request_error")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(400, "the request needs a 'model' (see GET /v1/models)", "invalid_request_error", "model")
        try:
            meta = RequestMetadata.from_openai_extras(body, dict(request.headers))
        except ValueError as exc:
            return self._error(400, str(exc), "invalid_request_error")
        slo_class = request.headers.get(SLO_CLASS_HEADER, "").strip().lower() or (
            "interactive" if meta.has_slo else "standard"
        )
        if slo_class not in SLO_CLASSES:
            return self._error(400, f"header {SLO_CLASS_HEADER}: got {slo_class!r}; accepted: one of {', '.join(SLO_CLASSES)}", "invalid_request_error")
        device = request.headers.get(DEVICE_HEADER, "").strip().lower() or None
        if device is not None and device not in DEVICE_KINDS:
            return self._error(400, f"header {DEVICE_HEADER}: got {device!r}; accepted: one of {', '.join(DEVICE_KINDS)}", "invalid_request_error")
        hashes = prefix_chunk_hashes(
            render_prompt_text(path, body), self.manager.prefix_chunk_chars, self.manager.prefix_max_chunks
        )
        stream = body.get("stream") is True
        tried: list[str] = []
        headers_in = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED_HEADERS}
        headers_in.update(meta.to_headers())
        client_auth = request.headers.get("authorization")

        for attempt in range(2):
            decision = self.manager.route(
                RouteRequest(model=model, prefix_hashes=hashes, slo_class=slo_class, device=device, exclude=frozenset(tried))
            )
            if decision.engine_id is None:
                self._remember(meta, path, model, decision, tried, decision.status)
                detail = decision.detail
                if tried:
                    detail += f" (connection to {', '.join(tried)} failed)"
                return self._error(decision.status, detail, "model_not_found" if decision.status == 404 else "service_unavailable")
            engine_id = decision.engine_id
            headers = dict(headers_in)
            engine_key = self.manager.api_key(engine_id)
            if engine_key:
                headers["authorization"] = f"Bearer {engine_key}"
            elif client_auth:
                headers["authorization"] = client_auth
            upstream = self.client.build_request("POST", self.manager.base_url(engine_id) + path, content=raw, headers=headers)
            try:
                response = await self.client.send(upstream, stream=True)
                if not stream:
                    await response.aread()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                self.manager.release(engine_id)
                self.manager.mark_unhealthy(engine_id, f"connection error: {type(exc).__name__}: {exc}")
                if attempt == 0:
                    self.metrics.retried(engine_id)
                tried.append(engine_id)
                logger.warning("engine %s unreachable (%s); %s", engine_id, exc, "retrying" if attempt == 0 else "giving up")
                continue
            except httpx.TimeoutException as exc:
                self.manager.release(engine_id)
                self._remember(meta, path, model, decision, tried, 504)
                return self._error(504, f"engine {engine_id} did not answer in time: {type(exc).__name__}", "timeout")

            self._remember(meta, path, model, decision, tried, response.status_code)
            out_headers = {
                ENGINE_HEADER: engine_id,
                ROUTE_HEADER: decision.reason,
                PREFIX_HEADER: str(decision.matched_chunks),
            }
            if tried:
                out_headers[RETRIED_HEADER] = ",".join(tried)
            media_type = response.headers.get("content-type", "application/json")
            if not stream:
                self.manager.release(engine_id)
                return Response(response.content, status_code=response.status_code, media_type=media_type, headers=out_headers)
            return StreamingResponse(
                self._relay(response, engine_id),
                status_code=response.status_code,
                media_type=media_type,
                headers=out_headers,
            )
        return self._error(503, f"engines {', '.join(tried)} could not be reached", "service_unavailable")

    async def _relay(self, response: Any, engine_id: str) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            self.manager.mark_unhealthy(engine_id, f"stream broken: {type(exc).__name__}: {exc}")
        finally:
            await response.aclose()
            self.manager.release(engine_id)

    def _remember(
        self, meta: RequestMetadata, path: str, model: str, decision: RouteDecision, tried: list[str], status: int
    ) -> None:
        self.routes.append(
            RouteRecord(
                time=time.time(),
                request_id=meta.request_id,
                path=path,
                model=model,
                engine_id=decision.engine_id,
                reason=decision.reason,
                matched_chunks=decision.matched_chunks,
                retried_from=tuple(tried),
                status=status,
            )
        )

    def _error(self, status: int, message: str, code: str, param: str | None = None) -> Any:
        from fastapi.responses import JSONResponse

        if status >= 400:
            self.metrics.error(status)
        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(
            {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status
        )
