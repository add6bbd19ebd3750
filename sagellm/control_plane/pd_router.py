"""Prefill/decode (PD) router: one OpenAI-compatible endpoint in front of prefill and decode engines.

Each generation request (``/v1/chat/completions``, ``/v1/completions``, LMDeploy's ``/generate``)
is served in two hops:

1. **prefill**: the request, non-streaming and with its token limit set to 1, goes to a prefill
   engine (``--role prefill``). Computing the prompt leaves the KV of its full blocks in that
   engine's transfer buffer (``sagellm.engines.lmdeploy.pd``). An error answer (HTTP 4xx) is the
   client's answer: the request was bad. A prefill engine that cannot be reached is marked
   unhealthy and the next one is tried; with none left the request goes to decode as it is
   (the decode engine then computes the whole prompt: slower, same tokens).
2. **decode**: the original request goes to a decode engine (``--role decode``), which pulls the
   prompt's KV from the prefill engines, computes the last partial block and generates; the
   answer (streamed or not) is relayed to the client.

Faults: a decode engine that cannot be reached, or that dies before its answer is complete,
is marked unhealthy and the request is sent to the next healthy decode engine (its prefix is
pulled again from the prefill engine). A streamed answer that breaks after part of it reached
the client cannot be replayed: the stream ends with an ``error`` event and ``[DONE]``. With no
decode engine left the client gets HTTP 503. Every wait is bounded (connect, read and per-request
timeouts); unhealthy engines are probed on ``/health`` and come back when they answer.

Response headers: ``x-sagellm-prefill-engine``, ``x-sagellm-decode-engine``,
``x-sagellm-retried-from``. ``GET /v1/sagellm/pd`` shows the engines and the requests in flight.

Run: ``python -m sagellm.control_plane.pd_router --prefill URL --decode URL [--decode URL] --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from sagellm.control_plane.ports import SagePorts

logger = logging.getLogger("sagellm.pd_router")

GENERATION_PATHS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/generate")
PREFILL_HEADER = "x-sagellm-prefill-engine"
DECODE_HEADER = "x-sagellm-decode-engine"
RETRIED_HEADER = "x-sagellm-retried-from"
_FORWARDED = ("content-type", "accept", "authorization", "user-agent")
_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_new_tokens")


@dataclass(frozen=True)
class PDRouterConfig:
    """Where the engines are and how long to wait.

    Attributes:
        prefill: base URLs of prefill engines (``http://host:port``).
        decode: base URLs of decode engines.
        connect_timeout_s: connecting to an engine.
        prefill_timeout_s: the whole prefill hop.
        request_timeout_s: reading the decode engine's answer (between chunks when streaming).
        health_interval_s: how often unhealthy engines are probed.
    """

    prefill: tuple[str, ...]
    decode: tuple[str, ...]
    connect_timeout_s: float = 5.0
    prefill_timeout_s: float = 300.0
    request_timeout_s: float = 600.0
    health_interval_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("prefill", "decode"):
            urls = tuple(u.rstrip("/") for u in getattr(self, name))
            if not urls or any(not u.startswith(("http://", "https://")) for u in urls):
                raise ValueError(f"PDRouterConfig.{name}: got {urls!r}; accepted: one or more http(s):// base URLs")
            object.__setattr__(self, name, urls)
        if not self.decode:
            raise ValueError("PDRouterConfig.decode: at least one decode engine is needed")


@dataclass
class EngineSlot:
    """One engine as the router tracks it."""

    url: str
    role: str
    healthy: bool = True
    in_flight: int = 0
    served: int = 0
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "role": self.role, "healthy": self.healthy, "in_flight": self.in_flight,
                "served": self.served, "last_error": self.last_error}


@dataclass
class InFlight:
    path: str
    phase: str = "prefill"
    prefill: str | None = None
    decode: str | None = None
    tried: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)


def prefill_body(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The request for the prefill hop: same prompt, no streaming, one output token."""
    out = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    out["stream"] = False
    present = [k for k in _TOKEN_LIMITS if k in out]
    for key in present or ["max_tokens"]:
        out[key] = 1
    return out


class PDRouter:
    """The router app (``self.app``) over ``config``'s engines."""

    def __init__(self, config: PDRouterConfig, *, transport: Any = None) -> None:
        self.config = config
        self.prefill = [EngineSlot(url, "prefill") for url in config.prefill]
        self.decode = [EngineSlot(url, "decode") for url in config.decode]
        self.requests: dict[int, InFlight] = {}
        self._ids = itertools.count(1)
        self._transport = transport
        self.client: Any = None
        self.app = self._build_app()

    # ------------------------------------------------------------------ app
    def _build_app(self) -> Any:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            import httpx

            self.client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.request_timeout_s, connect=self.config.connect_timeout_s),
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

        app = FastAPI(title="sagellm PD router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

        @app.get("/health")
        async def health() -> Any:
            ok = any(e.healthy for e in self.decode)
            return JSONResponse({"status": "ok" if ok else "no healthy decode engine"}, status_code=200 if ok else 503)

        @app.get("/v1/models")
        async def models(request: Request) -> Any:
            for slot in self._candidates(self.decode, ()):
                try:
                    response = await self.client.get(slot.url + "/v1/models", headers=self._headers(request))
                    return JSONResponse(response.json(), status_code=response.status_code)
                except Exception as exc:  # noqa: BLE001 - any failure: try the next engine
                    self._down(slot, exc)
            return self._error(503, "no decode engine could be reached", "service_unavailable")

        @app.get("/v1/sagellm/pd")
        async def state() -> Any:
            return {
                "prefill": [e.to_dict() for e in self.prefill],
                "decode": [e.to_dict() for e in self.decode],
                "requests": {str(k): vars(v) for k, v in self.requests.items()},
            }

        async def generation(request: Request) -> Any:
            return await self.forward(request)

        for path in GENERATION_PATHS:
            app.add_api_route(path, generation, methods=["POST"])
        return app

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            for slot in self.prefill + self.decode:
                if slot.healthy:
                    continue
                try:
                    response = await self.client.get(slot.url + "/health", timeout=self.config.connect_timeout_s)
                    if response.status_code == 200:
                        slot.healthy, slot.last_error = True, ""
                except Exception:  # noqa: BLE001 - still down
                    pass

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _candidates(slots: Sequence[EngineSlot], tried: Sequence[str]) -> list[EngineSlot]:
        usable = [s for s in slots if s.healthy and s.url not in tried]
        return sorted(usable, key=lambda s: (s.in_flight, s.served))

    @staticmethod
    def _headers(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}

    @staticmethod
    def _down(slot: EngineSlot, exc: BaseException) -> None:
        slot.healthy = False
        slot.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning("%s engine %s marked unhealthy: %s", slot.role, slot.url, slot.last_error)

    @staticmethod
    def _error(status: int, message: str, code: str) -> Any:
        from fastapi.responses import JSONResponse

        kind = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status)

    # ------------------------------------------------------------------ forwarding
    async def forward(self, request: Request) -> Any:
        path = request.url.path
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(400, f"request body is not valid JSON: {exc}", "invalid_request_error")
        if not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object", "invalid_request_error")
        headers = self._headers(request)
        request_id = next(self._ids)
        flight = self.requests[request_id] = InFlight(path)
        try:
            early = await self._prefill(path, body, headers, flight)
            if early is not None:
                return early
            flight.phase = "decode"
            return await self._decode(path, raw, body.get("stream") is True, headers, flight, request_id)
        except BaseException:
            self.requests.pop(request_id, None)
            raise
        finally:
            if body.get("stream") is not True:
                self.requests.pop(request_id, None)

    async def _prefill(self, path: str, body: dict[str, Any], headers: dict[str, str], flight: InFlight) -> Any:
        """Run the prefill hop; returns a response to send as is (a 4xx), else None."""
        import httpx
        from fastapi.responses import Response

        content = json.dumps(prefill_body(path, body)).encode()
        for slot in self._candidates(self.prefill, ()):
            flight.prefill = slot.url
            slot.in_flight += 1
            try:
                response = await self.client.post(slot.url + path, content=content, headers=headers,
                                                  timeout=httpx.Timeout(self.config.prefill_timeout_s, connect=self.config.connect_timeout_s))
            except httpx.TransportError as exc:
                self._down(slot, exc)
                continue
            finally:
                slot.in_flight -= 1
            slot.served += 1
            if 400 <= response.status_code < 500:
                return Response(response.content, status_code=response.status_code,
                                media_type=response.headers.get("content-type", "application/json"))
            if response.status_code >= 500:
                logger.warning("prefill engine %s answered %d; decoding without it", slot.url, response.status_code)
                flight.prefill = None
            return None
        flight.prefill = None
        logger.warning("no prefill engine reachable; the decode engine computes the whole prompt")
        return None

    def _out_headers(self, flight: InFlight, decode: str) -> dict[str, str]:
        headers = {PREFILL_HEADER: flight.prefill or "none", DECODE_HEADER: decode}
        if flight.tried:
            headers[RETRIED_HEADER] = ",".join(flight.tried)
        return headers

    async def _decode(self, path: str, raw: bytes, stream: bool, headers: dict[str, str], flight: InFlight, request_id: int) -> Any:
        import httpx
        from fastapi.responses import Response, StreamingResponse

        while True:
            candidates = self._candidates(self.decode, flight.tried)
            if not candidates:
                tried = ", ".join(flight.tried) or "none"
                self.requests.pop(request_id, None)
                return self._error(503, f"no healthy decode engine could serve the request (tried: {tried})", "service_unavailable")
            slot = candidates[0]
            flight.decode = slot.url
            slot.in_flight += 1
            upstream = self.client.build_request("POST", slot.url + path, content=raw, headers=headers)
            try:
                response = await self.client.send(upstream, stream=True)
                if not stream:
                    await response.aread()
                    slot.in_flight -= 1
                    slot.served += 1
                    return Response(response.content, status_code=response.status_code,
                                    media_type=response.headers.get("content-type", "application/json"),
                                    headers=self._out_headers(flight, slot.url))
                chunks = response.aiter_raw()
                first = await anext(chunks, b"")
            except (httpx.TransportError, httpx.StreamError) as exc:
                slot.in_flight -= 1
                if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
                    self.requests.pop(request_id, None)
                    return self._error(504, f"decode engine {slot.url} did not answer in time: {type(exc).__name__}", "timeout")
                self._down(slot, exc)
                flight.tried.append(slot.url)
                continue
            slot.served += 1
            return StreamingResponse(
                self._relay(response, chunks, first, slot, request_id),
                status_code=response.status_code,
                media_type=response.headers.get("content-type", "text/event-stream"),
                headers=self._out_headers(flight, slot.url),
            )

    async def _relay(self, response: Any, chunks: Any, first: bytes, slot: EngineSlot, request_id: int) -> AsyncIterator[bytes]:
        import httpx

        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        except (httpx.TransportError, httpx.StreamError) as exc:
            self._down(slot, exc)
            error = {"error": {"message": f"decode engine {slot.url} failed mid-stream ({type(exc).__name__}); "
                                          "the answer is incomplete", "type": "server_error", "code": "engine_failed"}}
            yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
        finally:
            slot.in_flight -= 1
            self.requests.pop(request_id, None)
            await response.aclose()


def serve(config: PDRouterConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve the router with uvicorn until interrupted."""
    import uvicorn

    port = SagePorts.resolve(port, host)
    print(f"[sagellm] PD router at http://{host}:{port} (prefill: {', '.join(config.prefill)}; decode: {', '.join(config.decode)})", flush=True)
    uvicorn.run(PDRouter(config).app, host=host, port=port, log_level="warning")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="sagellm prefill/decode router")
    parser.add_argument("--prefill", action="append", required=True, help="prefill engine base URL (repeatable)")
    parser.add_argument("--decode", action="append", required=True, help="decode engine base URL (repeatable)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--request-timeout-s", type=float, default=600.0)
    args = parser.parse_args(argv)
    serve(PDRouterConfig(prefill=tuple(args.prefill), decode=tuple(args.decode), request_timeout_s=args.request_timeout_s),
          args.host, args.port)


if __name__ == "__main__":
    main()
