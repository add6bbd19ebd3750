"""The typed recording API other sagellm modules call.

``metrics`` (module attribute) records into prometheus_client's default registry;
an engine server serves it, merged across its processes, on ``/metrics``::

    from sagellm.telemetry import metrics

    metrics.prefix_lookup_tokens("device", 128)
    metrics.prefix_hit_tokens("device", 96)        # tier: device | host | ssd | remote
    metrics.kv_blocks("host", used=40, free=216)
    metrics.kv_offload("host", nbytes=1 << 20, seconds=0.002)
    metrics.scheduler_queue_length("waiting", 3)

Arguments are checked (unknown tier, negative count...) and raise ``ValueError``: a
wrong label would otherwise create a new series silently. Prometheus objects are created
on first use, so importing this module has no side effects and the multiprocess
directory (``sagellm.telemetry.multiproc``) only has to exist before the first record.
Tests pass their own ``CollectorRegistry``: ``SageMetrics(registry)``.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from sagellm.core.kv import KVTier
from sagellm.telemetry.series import ENGINE_SERIES, GATEWAY_SERIES, SeriesSpec, series_by_name

TIERS: tuple[str, ...] = tuple(t.value for t in KVTier)
KV_BLOCK_STATES: tuple[str, ...] = ("used", "free")
TRANSFER_DIRECTIONS: tuple[str, ...] = ("offload", "onload")
SLO_KINDS: tuple[str, ...] = ("ttft", "tpot")
SCHEDULER_EVENTS: tuple[str, ...] = (
    "round_cut_all_finished", "round_cut_admit_waiting", "held_from_round", "prefill_split", "rejected",
)
_LABEL_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _choice(what: str, value: object, choices: tuple[str, ...]) -> str:
    if isinstance(value, KVTier):
        value = value.value
    if value not in choices:
        raise ValueError(f"{what}: got {value!r}; accepted: one of {', '.join(map(repr, choices))}")
    return str(value)


def _ident(what: str, value: object) -> str:
    if not isinstance(value, str) or not _LABEL_RE.match(value):
        raise ValueError(f"{what}: got {value!r}; accepted: a lowercase identifier such as 'waiting' or 'shm'")
    return value


def _count(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what}: got {value!r}; accepted: an integer >= 0")
    return value


def _seconds(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what}: got {value!r}; accepted: a finite number of seconds >= 0")
    return float(value)


class _SeriesSet:
    """Creates the prometheus_client objects of ``series`` in ``registry`` on first use."""

    def __init__(self, series: tuple[SeriesSpec, ...], registry: Any = None) -> None:
        self._specs = series_by_name(series)
        self._registry = registry
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from prometheus_client import REGISTRY

            return REGISTRY
        return self._registry

    def get(self, name: str) -> Any:
        obj = self._objects.get(name)
        if obj is not None:
            return obj
        with self._lock:
            obj = self._objects.get(name)
            if obj is None:
                obj = self._create(self._specs[name])
                self._objects[name] = obj
            return obj

    def _create(self, spec: SeriesSpec) -> Any:
        import prometheus_client as prom

        common: dict[str, Any] = {"labelnames": spec.labels, "registry": self.registry}
        if spec.kind == "counter":
            return prom.Counter(spec.name, spec.help, **common)
        if spec.kind == "gauge":
            return prom.Gauge(spec.name, spec.help, multiprocess_mode=spec.gauge_mode, **common)
        return prom.Histogram(spec.name, spec.help, buckets=spec.buckets, **common)

    def child(self, name: str, **labels: str) -> Any:
        obj = self.get(name)
        return obj.labels(**labels) if labels else obj


class SageMetrics:
    """Engine-side series (``ENGINE_SERIES``). ``registry`` None = prometheus_client's default."""

    def __init__(self, registry: Any = None) -> None:
        self._set = _SeriesSet(ENGINE_SERIES, registry)

    # prefix reuse -------------------------------------------------------------
    def prefix_lookup_tokens(self, tier: str | KVTier, n: int) -> None:
        """``n`` prompt tokens were looked up in ``tier``."""
        tier, n = _choice("tier", tier, TIERS), _count("n", n)
        self._set.child("sagellm_prefix_lookup_tokens", tier=tier).inc(n)

    def prefix_hit_tokens(self, tier: str | KVTier, n: int) -> None:
        """``n`` prompt tokens were found in ``tier`` (their prefill is skipped)."""
        tier, n = _choice("tier", tier, TIERS), _count("n", n)
        self._set.child("sagellm_prefix_hit_tokens", tier=tier).inc(n)

    # KV tiers -----------------------------------------------------------------
    def kv_blocks(self, tier: str | KVTier, *, used: int, free: int) -> None:
        """Current block counts of ``tier``."""
        tier, used, free = _choice("tier", tier, TIERS), _count("used", used), _count("free", free)
        self._set.child("sagellm_kv_blocks", tier=tier, state="used").set(used)
        self._set.child("sagellm_kv_blocks", tier=tier, state="free").set(free)

    def kv_offload(self, tier: str | KVTier, *, nbytes: int, seconds: float) -> None:
        """One offload of ``nbytes`` from the device tier to ``tier`` took ``seconds``."""
        self._kv_transfer("offload", tier, nbytes, seconds)

    def kv_onload(self, tier: str | KVTier, *, nbytes: int, seconds: float) -> None:
        """One onload of ``nbytes`` from ``tier`` back to the device tier took ``seconds``."""
        self._kv_transfer("onload", tier, nbytes, seconds)

    def _kv_transfer(self, direction: str, tier: str | KVTier, nbytes: int, seconds: float) -> None:
        tier = _choice("tier", tier, TIERS)
        nbytes, seconds = _count("nbytes", nbytes), _seconds("seconds", seconds)
        self._set.child("sagellm_kv_transfer_bytes", direction=direction, tier=tier).inc(nbytes)
        self._set.child("sagellm_kv_transfer_seconds", direction=direction, tier=tier).observe(seconds)

    # transport ----------------------------------------------------------------
    def transport_transfer(self, backend: str, *, nbytes: int, seconds: float) -> None:
        """A transfer of ``nbytes`` through ``backend`` (shm, tcp, torch_dist...) took ``seconds``."""
        backend = _ident("backend", backend)
        nbytes, seconds = _count("nbytes", nbytes), _seconds("seconds", seconds)
        self._set.child("sagellm_transport_bytes", backend=backend).inc(nbytes)
        self._set.child("sagellm_transport_seconds", backend=backend).inc(seconds)
        if seconds > 0:
            self._set.child("sagellm_transport_bandwidth_bytes_per_second", backend=backend).set(nbytes / seconds)
        self._set.child("sagellm_transport_latency_seconds", backend=backend).observe(seconds)

    def transport_resent_chunks(self, backend: str, n: int, *, recovered: bool) -> None:
        """``n`` chunks failed their checksum and were fetched again; ``recovered``: the transfer then succeeded."""
        backend, n = _ident("backend", backend), _count("n", n)
        outcome = "recovered" if recovered else "failed"
        self._set.child("sagellm_transport_resent_chunks", backend=backend, outcome=outcome).inc(n)

    # scheduler and SLOs -------------------------------------------------------
    def scheduler_queue_length(self, queue: str, n: int) -> None:
        """``n`` sequences are in scheduler queue ``queue`` (waiting, running, swapped...)."""
        queue, n = _ident("queue", queue), _count("n", n)
        self._set.child("sagellm_scheduler_queue_length", queue=queue).set(n)

    def scheduler_event(self, event: str, n: int = 1) -> None:
        """The scheduler made decision ``event`` (``SCHEDULER_EVENTS``) ``n`` times."""
        event, n = _choice("event", event, SCHEDULER_EVENTS), _count("n", n)
        self._set.child("sagellm_scheduler_events", event=event).inc(n)

    def slo_miss(self, kind: str) -> None:
        """A request missed its ``kind`` (ttft or tpot) target."""
        self._set.child("sagellm_slo_misses", kind=_choice("kind", kind, SLO_KINDS)).inc()

    # latency ------------------------------------------------------------------
    def observe_ttft(self, seconds: float) -> None:
        self._set.get("sagellm_ttft_seconds").observe(_seconds("seconds", seconds))

    def observe_tpot(self, seconds: float) -> None:
        self._set.get("sagellm_tpot_seconds").observe(_seconds("seconds", seconds))

    def observe_request_latency(self, endpoint: str, seconds: float) -> None:
        """``endpoint``: the request path, e.g. ``/v1/chat/completions``."""
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise ValueError(f"endpoint: got {endpoint!r}; accepted: a request path starting with '/'")
        seconds = _seconds("seconds", seconds)
        self._set.child("sagellm_request_latency_seconds", endpoint=endpoint).observe(seconds)


class GatewayMetrics:
    """Gateway-side series (``GATEWAY_SERIES``); the gateway passes its own registry."""

    def __init__(self, registry: Any = None) -> None:
        self._set = _SeriesSet(GATEWAY_SERIES, registry)

    def routed(self, engine: str, reason: str) -> None:
        self._set.child("sagellm_gateway_requests", engine=engine, reason=_ident("reason", reason)).inc()

    def retried(self, failed_engine: str) -> None:
        self._set.child("sagellm_gateway_retries", engine=failed_engine).inc()

    def error(self, status: int) -> None:
        self._set.child("sagellm_gateway_errors", status=str(int(status))).inc()

    def engine_state(self, engine: str, *, healthy: bool, in_flight: int) -> None:
        in_flight = _count("in_flight", in_flight)
        self._set.child("sagellm_gateway_engine_healthy", engine=engine).set(1 if healthy else 0)
        self._set.child("sagellm_gateway_in_flight", engine=engine).set(in_flight)

    def prefix_affinity(self, outcome: str) -> None:
        self._set.child("sagellm_gateway_prefix_affinity", outcome=_choice("outcome", outcome, ("hit", "miss"))).inc()


#: The process-wide engine metrics (default registry).
metrics = SageMetrics()
