"""``ControlPlaneManager``: the engines behind one gateway, their health, and routing.

It registers two sorts of engines, both reached over HTTP through their OpenAI-compatible
API:

- sagellm engines it starts itself as subprocesses (``python -m sagellm.cli.main llm engine
  start ...`` on a port from ``SagePorts``), stopped again by :meth:`shutdown`;
- external endpoints (vLLM, stock LMDeploy, SGLang, another sagellm) registered by URL.

Health: :meth:`check_health` calls every engine's ``/health`` (bounded timeout). A
starting engine turns healthy on its first success; a healthy one turns unhealthy after
``unhealthy_after`` consecutive failures, at once when its process has exited, or when
the gateway reports a connection error (:meth:`mark_unhealthy`). Unhealthy engines keep
being checked and come back on success.

Routing: :meth:`route` builds a ``RoutingSnapshot``, asks the configured policy
(``routing.ROUTING_POLICIES``) and applies the decision: the engine's in-flight count
goes up until :meth:`release`, and the request's prefix chunks are recorded as held by
that engine. All methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagellm.control_plane.engine_config import EngineStartConfig, engine_start_args
from sagellm.control_plane.local_engines import cache_dir
from sagellm.control_plane.ports import SagePorts
from sagellm.control_plane.routing import (
    DEFAULT_CHUNK_CHARS,
    DEFAULT_MAX_CHUNKS,
    ROUTING_POLICIES,
    EngineView,
    PrefixIndex,
    RouteDecision,
    RouteRequest,
    RoutingSnapshot,
)
from sagellm.core.engine_info import EngineInfo, EngineKind, EngineState
from sagellm.core.validation import check_float, check_int, invalid
from sagellm.telemetry.metrics import GatewayMetrics

DEFAULT_CAPACITY = 8


@dataclass(frozen=True)
class HealthPolicy:
    """How engines are checked.

    Attributes:
        interval_s: seconds between checks (the gateway's loop).
        timeout_s: per ``/health`` call.
        unhealthy_after: consecutive failures that make a healthy engine unhealthy.
        startup_timeout_s: how long a started engine may stay ``starting``.
    """

    interval_s: float = 2.0
    timeout_s: float = 2.0
    unhealthy_after: int = 3
    startup_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_float(owner, "interval_s", self.interval_s, positive=True)
        check_float(owner, "timeout_s", self.timeout_s, positive=True)
        check_int(owner, "unhealthy_after", self.unhealthy_after, minimum=1)
        check_float(owner, "startup_timeout_s", self.startup_timeout_s, positive=True)


@dataclass
class _Engine:
    info: EngineInfo
    models: tuple[str, ...]
    api_key: str | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    registered_at: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    served: int = 0
    last_routed: int = 0
    failures: int = 0
    last_error: str = ""

    def view(self) -> EngineView:
        return EngineView(info=self.info, models=self.models, in_flight=self.in_flight, last_routed=self.last_routed)


@dataclass(frozen=True)
class EngineStatus:
    """What ``/v1/sagellm/engines`` shows for one engine."""

    info: EngineInfo
    models: tuple[str, ...]
    in_flight: int
    served: int
    failures: int
    last_error: str
    pid: int | None
    log_path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info.to_dict(),
            "models": list(self.models),
            "in_flight": self.in_flight,
            "served": self.served,
            "failures": self.failures,
            "last_error": self.last_error,
            "pid": self.pid,
            "log_path": self.log_path,
        }


class ControlPlaneManager:
    """Engines, their health and routing (see the module docstring).

    Args:
        policy: a name in ``ROUTING_POLICIES``.
        health: checking parameters.
        prefix_chunk_chars, prefix_max_chunks: prompt prefix hashing (``routing.prefix_chunk_hashes``).
        metrics: gateway series to update (None: none).
    """

    def __init__(
        self,
        *,
        policy: str = "prefix_affinity",
        health: HealthPolicy | None = None,
        prefix_chunk_chars: int = DEFAULT_CHUNK_CHARS,
        prefix_max_chunks: int = DEFAULT_MAX_CHUNKS,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.policy_name = policy
        self._policy = ROUTING_POLICIES.get(policy)
        self.health = health or HealthPolicy()
        check_int(type(self).__name__, "prefix_chunk_chars", prefix_chunk_chars, minimum=1)
        check_int(type(self).__name__, "prefix_max_chunks", prefix_max_chunks, minimum=0)
        self.prefix_chunk_chars = prefix_chunk_chars
        self.prefix_max_chunks = prefix_max_chunks
        self.metrics = metrics
        self._engines: dict[str, _Engine] = {}
        self._prefixes = PrefixIndex()
        self._sequence = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------ registration

    def register(
        self,
        info: EngineInfo,
        *,
        models: Sequence[str] = (),
        api_key: str | None = None,
        process: subprocess.Popen | None = None,
        log_path: Path | None = None,
    ) -> EngineInfo:
        """Add an engine. ``models`` defaults to ``(info.model,)``; an engine needs a ``base_url``.

        Raises:
            ValueError: the id is taken, or the engine has no ``base_url``.
        """
        if info.base_url is None:
            raise invalid("EngineInfo", "base_url", None, "an http(s) URL: the control plane reaches engines over HTTP")
        with self._lock:
            if info.engine_id in self._engines:
                raise ValueError(f"engine {info.engine_id!r} is already registered; registered: {sorted(self._engines)}")
            self._engines[info.engine_id] = _Engine(
                info=info,
                models=tuple(models) or (info.model,),
                api_key=api_key,
                process=process,
                log_path=log_path,
            )
        self._publish(info.engine_id)
        return info

    def register_endpoint(
        self,
        url: str,
        *,
        kind: EngineKind | str = EngineKind.OPENAI,
        engine_id: str | None = None,
        model: str | None = None,
        device: str = "unknown",
        capacity: int = DEFAULT_CAPACITY,
        api_key: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
    ) -> EngineInfo:
        """Register an external OpenAI-compatible engine by URL.

        Its models come from ``GET {url}/v1/models`` (one bounded call); if that fails the
        engine is registered as ``starting`` serving ``model`` (required then) and the health
        loop brings it in. Registered healthy when the call succeeds.
        """
        import httpx

        base_url = url.rstrip("/")
        if base_url.endswith("/v1"):
            base_url = base_url[: -len("/v1")]
        models: tuple[str, ...] = ()
        error = ""
        try:
            models = _fetch_models_sync(base_url, api_key, timeout_s)
        except (httpx.HTTPError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if models and model is not None and model not in models:
            raise ValueError(f"{base_url} does not serve model {model!r}; it serves {list(models)}")
        if not models:
            if model is None:
                raise ValueError(f"cannot list the models of {base_url} ({error or 'it serves none'}); pass model= explicitly")
            models = (model,)
        state = EngineState.HEALTHY if not error else EngineState.STARTING
        info = EngineInfo(
            engine_id=engine_id or f"{EngineKind(kind).value}-{_url_id(base_url)}",
            kind=kind,
            model=model or models[0],
            device=device,
            base_url=base_url,
            capacity=capacity,
            state=state,
            labels=dict(labels or {}),
        )
        self.register(info, models=models, api_key=api_key)
        if error:
            self._set_error(info.engine_id, error)
        return info

    def start_engine(
        self,
        config: EngineStartConfig,
        *,
        extra_args: Sequence[str] = (),
        capacity: int | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> EngineInfo:
        """Start a sagellm engine subprocess for ``config`` and register it as ``starting``.

        The port is chosen now (``config.port`` 0 = a free one) so the URL is known before
        the engine listens. The process gets its own session (so :meth:`shutdown` can stop
        the engine process it spawns too) and its output goes to a log file.
        """
        if config.model is None:
            raise ValueError("start_engine: config.model is required (a checkpoint directory)")
        port = SagePorts.resolve(config.port, config.host)
        config = dataclasses.replace(config, port=port, sample=False)
        name = config.model_name or config.model
        command = [sys.executable, "-m", "sagellm.cli.main", "llm", "engine", "start", *engine_start_args(config), *extra_args]
        log_dir = log_dir or cache_dir() / "gateway" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"engine-{port}.log"
        child_env = {**os.environ, **(env or {})}
        child_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each engine merges only its own processes
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True
            )
        info = EngineInfo(
            engine_id=f"sagellm-{process.pid}",
            kind=EngineKind.SAGELLM,
            model=name,
            device=_platform_of(config.device),
            base_url=f"http://{config.host}:{port}",
            capacity=capacity or config.max_batch_size or DEFAULT_CAPACITY,
            state=EngineState.STARTING,
            labels={"managed": "true", **(labels or {})},
        )
        return self.register(info, models=(name,), process=process, log_path=log_path)

    def unregister(self, engine_id: str) -> EngineInfo:
        with self._lock:
            engine = self._get(engine_id)
            del self._engines[engine_id]
            self._prefixes.forget_engine(engine_id)
        return engine.info

    # ------------------------------------------------------------ queries

    def engines(self) -> tuple[EngineStatus, ...]:
        with self._lock:
            return tuple(
                EngineStatus(
                    info=e.info,
                    models=e.models,
                    in_flight=e.in_flight,
                    served=e.served,
                    failures=e.failures,
                    last_error=e.last_error,
                    pid=e.process.pid if e.process is not None else None,
                    log_path=str(e.log_path) if e.log_path else None,
                )
                for e in sorted(self._engines.values(), key=lambda e: e.info.engine_id)
            )

    def engine(self, engine_id: str) -> EngineInfo:
        with self._lock:
            return self._get(engine_id).info

    def base_url(self, engine_id: str) -> str:
        return str(self.engine(engine_id).base_url)

    def api_key(self, engine_id: str) -> str | None:
        with self._lock:
            return self._get(engine_id).api_key

    def models(self) -> dict[str, tuple[str, ...]]:
        """Model name -> ids of the healthy engines serving it."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for e in self._engines.values():
                if e.info.is_routable:
                    for m in e.models:
                        out.setdefault(m, []).append(e.info.engine_id)
        return {m: tuple(sorted(ids)) for m, ids in sorted(out.items())}

    def healthy_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._engines.values() if e.info.is_routable)

    def _get(self, engine_id: str) -> _Engine:
        try:
            return self._engines[engine_id]
        except KeyError:
            raise KeyError(f"unknown engine {engine_id!r}; registered: {sorted(self._engines)}") from None

    # ------------------------------------------------------------ routing

    def snapshot(self, request: RouteRequest) -> RoutingSnapshot:
        with self._lock:
            return RoutingSnapshot(
                request=request,
                engines=tuple(e.view() for e in self._engines.values()),
                prefix_owners=self._prefixes.owners(request.prefix_hashes),
            )

    def route(self, request: RouteRequest) -> RouteDecision:
        """Choose an engine and count the request against it (until :meth:`release`)."""
        with self._lock:
            decision = self._policy(self.snapshot(request))
            if decision.engine_id is None:
                return decision
            engine = self._get(decision.engine_id)
            self._sequence += 1
            engine.in_flight += 1
            engine.served += 1
            engine.last_routed = self._sequence
            self._prefixes.insert(request.prefix_hashes, decision.engine_id)
        if self.metrics is not None:
            self.metrics.routed(decision.engine_id, decision.reason)
            if request.prefix_hashes:
                self.metrics.prefix_affinity("hit" if decision.reason == "prefix_affinity" else "miss")
        self._publish(decision.engine_id)
        return decision

    def release(self, engine_id: str) -> None:
        """A request routed to ``engine_id`` finished (any outcome)."""
        with self._lock:
            engine = self._engines.get(engine_id)
            if engine is not None and engine.in_flight > 0:
                engine.in_flight -= 1
        self._publish(engine_id)

    # ------------------------------------------------------------ health

    def mark_unhealthy(self, engine_id: str, reason: str) -> None:
        """Take an engine out of routing now (connection error, dead process)."""
        with self._lock:
            engine = self._engines.get(engine_id)
            if engine is None:
                return
            engine.failures = max(engine.failures, self.health.unhealthy_after)
            engine.last_error = reason
            if engine.info.state is not EngineState.STOPPED:
                engine.info = engine.info.with_state(EngineState.UNHEALTHY)
            self._prefixes.forget_engine(engine_id)
        self._publish(engine_id)

    def record_health(self, engine_id: str, ok: bool, error: str = "", models: Sequence[str] = ()) -> EngineState:
        """Apply one health-check outcome; returns the engine's new state."""
        with self._lock:
            engine = self._engines.get(engine_id)
            if engine is None:
                return EngineState.STOPPED
            state = engine.info.state
            if state is EngineState.STOPPED:
                return state
            if ok:
                engine.failures = 0
                engine.last_error = ""
                if models:
                    engine.models = tuple(models)
                new = EngineState.HEALTHY
            else:
                engine.failures += 1
                engine.last_error = error
                new = state
                exit_code = engine.process.poll() if engine.process is not None else None
                if exit_code is not None:
                    engine.last_error = f"process exited with code {exit_code}"
                    new = EngineState.UNHEALTHY
                elif state is EngineState.STARTING:
                    if time.monotonic() - engine.registered_at > self.health.startup_timeout_s:
                        engine.last_error = f"not healthy after {self.health.startup_timeout_s:g}s: {error}"
                        new = EngineState.UNHEALTHY
                elif engine.failures >= self.health.unhealthy_after:
                    new = EngineState.UNHEALTHY
            if new is not state:
                engine.info = engine.info.with_state(new)
                if new is EngineState.UNHEALTHY:
                    self._prefixes.forget_engine(engine_id)
        self._publish(engine_id)
        return new

    async def check_health(self, client: Any) -> dict[str, EngineState]:
        """Check every engine once, concurrently, with ``client`` (an ``httpx.AsyncClient``)."""
        with self._lock:
            targets = [
                (e.info.engine_id, e.info.base_url, e.api_key, e.info.state)
                for e in self._engines.values()
                if e.info.state is not EngineState.STOPPED
            ]

        async def one(engine_id: str, base_url: str, api_key: str | None, state: EngineState) -> tuple[str, EngineState]:
            ok, error, models = False, "", ()
            try:
                response = await client.get(f"{base_url}/health", timeout=self.health.timeout_s)
                ok = response.status_code == 200
                error = "" if ok else f"/health answered HTTP {response.status_code}"
                if ok and state is not EngineState.HEALTHY:
                    models = await _fetch_models(client, base_url, api_key, self.health.timeout_s)
            except Exception as exc:  # any failure to reach the engine is a failed check
                ok, error = False, f"{type(exc).__name__}: {exc}".strip()
            return engine_id, self.record_health(engine_id, ok, error, models)

        results = await asyncio.gather(*(one(*t) for t in targets))
        return dict(results)

    def check_health_now(self) -> dict[str, EngineState]:
        """One synchronous round of :meth:`check_health` (for scripts and tests)."""
        import httpx

        async def run() -> dict[str, EngineState]:
            async with httpx.AsyncClient() as client:
                return await self.check_health(client)

        return asyncio.run(run())

    def wait_until_healthy(self, engine_ids: Sequence[str] | None = None, timeout_s: float = 600.0) -> None:
        """Check repeatedly until the engines are healthy (all registered when None).

        Raises:
            TimeoutError: after ``timeout_s``; RuntimeError: an engine turned unhealthy.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.check_health_now()
            wanted = states if engine_ids is None else {i: states.get(i, EngineState.STOPPED) for i in engine_ids}
            bad = {i: s for i, s in wanted.items() if s is EngineState.UNHEALTHY}
            if bad:
                details = "; ".join(f"{i}: {self._get(i).last_error}" for i in bad)
                raise RuntimeError(f"engine(s) became unhealthy: {details}")
            if all(s is EngineState.HEALTHY for s in wanted.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"engines not healthy after {timeout_s:g}s: {wanted}")
            time.sleep(min(self.health.interval_s, 1.0))

    # ------------------------------------------------------------ shutdown

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the engines this manager started (SIGTERM, SIGKILL after ``timeout_s``)."""
        with self._lock:
            managed = [e for e in self._engines.values() if e.process is not None]
            for e in managed:
                e.info = e.info.with_state(EngineState.STOPPED)
        for e in managed:
            _signal_group(e.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for e in managed:
            try:
                e.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(e.process, signal.SIGKILL)
                e.process.wait(timeout=10)
            _signal_group(e.process, signal.SIGKILL)  # the engine process it spawned, if still there

    # ------------------------------------------------------------ internals

    def _set_error(self, engine_id: str, error: str) -> None:
        with self._lock:
            self._get(engine_id).last_error = error

    def _publish(self, engine_id: str) -> None:
        if self.metrics is None:
            return
        with self._lock:
            engine = self._engines.get(engine_id)
            if engine is None:
                return
            healthy, in_flight = engine.info.is_routable, engine.in_flight
        self.metrics.engine_state(engine_id, healthy=healthy, in_flight=in_flight)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _platform_of(device: str) -> str:
    """The HAL platform a ``--device`` value runs on (``auto`` resolved on this host)."""
    from sagellm.hal import canonical_name, resolve_device

    if device.strip().lower() == "auto":
        return resolve_device("auto").platform
    return canonical_name(device)


def _url_id(base_url: str) -> str:
    return base_url.split("://", 1)[-1].replace("/", "_")


def _auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _models_from(payload: Any) -> tuple[str, ...]:
    data = payload.get("data") if isinstance(payload, Mapping) else None
    if not isinstance(data, list):
        raise ValueError(f"/v1/models answered {payload!r}; expected an OpenAI model list")
    return tuple(str(m["id"]) for m in data if isinstance(m, Mapping) and "id" in m)


def _fetch_models_sync(base_url: str, api_key: str | None, timeout_s: float) -> tuple[str, ...]:
    import httpx

    response = httpx.get(f"{base_url}/v1/models", headers=_auth_headers(api_key), timeout=timeout_s)
    response.raise_for_status()
    return _models_from(response.json())


async def _fetch_models(client: Any, base_url: str, api_key: str | None, timeout_s: float) -> tuple[str, ...]:
    try:
        response = await client.get(f"{base_url}/v1/models", headers=_auth_headers(api_key), timeout=timeout_s)
        response.raise_for_status()
        return _models_from(response.json())
    except Exception:  # keep the models already known; the next round retries
        return ()
