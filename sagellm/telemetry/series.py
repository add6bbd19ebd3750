"""Every Prometheus series sagellm exports, defined once.

A ``SeriesSpec`` names a series, its type, help text, labels and (for histograms)
buckets. ``ENGINE_SERIES`` are recorded by an engine server and the engine process it
spawns (see ``sagellm.telemetry.multiproc``); ``GATEWAY_SERIES`` by the control-plane
gateway. ``configs/grafana/sagellm.json`` plots these names; the unit tests check that
the dashboard and this table agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sagellm.core.validation import check_choice, check_str, invalid

SeriesKind = Literal["counter", "gauge", "histogram"]
SERIES_KINDS: tuple[str, ...] = ("counter", "gauge", "histogram")
#: How a gauge set in several processes is combined (prometheus_client multiprocess modes).
GAUGE_MODES: tuple[str, ...] = ("mostrecent", "livesum", "max", "min", "all")

LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TRANSFER_BUCKETS_S: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclass(frozen=True)
class SeriesSpec:
    """One Prometheus series.

    Attributes:
        name: series name; counters are named without the ``_total`` suffix the
            exposition adds (``sagellm_prefix_hit_tokens`` is scraped as
            ``sagellm_prefix_hit_tokens_total``).
        kind: ``counter``, ``gauge`` or ``histogram``.
        help: one line for the ``# HELP`` comment.
        labels: label names, in order.
        buckets: histogram upper bounds in seconds (histograms only).
        gauge_mode: how values from several processes combine (gauges only).
    """

    name: str
    kind: SeriesKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    gauge_mode: str = "mostrecent"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "name", self.name)
        if not self.name.startswith("sagellm_") or self.name.endswith("_total"):
            raise invalid(owner, "name", self.name, "a name starting with 'sagellm_' and not ending in '_total'")
        check_choice(owner, "kind", self.kind, SERIES_KINDS)
        check_str(owner, "help", self.help)
        if (self.kind == "histogram") != bool(self.buckets):
            raise invalid(owner, "buckets", self.buckets, "bucket bounds for histograms, none otherwise")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise invalid(owner, "buckets", self.buckets, "strictly increasing bounds")
        check_choice(owner, "gauge_mode", self.gauge_mode, GAUGE_MODES)

    @property
    def sample_name(self) -> str:
        """The name a scrape shows for the main sample (counters gain ``_total``)."""
        return self.name + "_total" if self.kind == "counter" else self.name


ENGINE_SERIES: tuple[SeriesSpec, ...] = (
    SeriesSpec(
        "sagellm_prefix_lookup_tokens", "counter",
        "Prompt tokens looked up in a prefix-reuse tier.", ("tier",),
    ),
    SeriesSpec(
        "sagellm_prefix_hit_tokens", "counter",
        "Prompt tokens whose KV was found in a prefix-reuse tier (prefill skipped).", ("tier",),
    ),
    SeriesSpec(
        "sagellm_kv_blocks", "gauge",
        "KV cache blocks per tier and state (used, free).", ("tier", "state"),
    ),
    SeriesSpec(
        "sagellm_kv_transfer_bytes", "counter",
        "KV bytes moved between the device tier and another tier (offload: device to tier, onload: back).",
        ("direction", "tier"),
    ),
    SeriesSpec(
        "sagellm_kv_transfer_seconds", "histogram",
        "Latency of one KV offload or onload.", ("direction", "tier"), TRANSFER_BUCKETS_S,
    ),
    SeriesSpec(
        "sagellm_transport_bytes", "counter",
        "Bytes sent through a KV transport backend.", ("backend",),
    ),
    SeriesSpec(
        "sagellm_transport_seconds", "counter",
        "Seconds spent in KV transport transfers; rate(bytes) / rate(seconds) is the bandwidth.", ("backend",),
    ),
    SeriesSpec(
        "sagellm_transport_bandwidth_bytes_per_second", "gauge",
        "Bandwidth of the most recent KV transport transfer.", ("backend",),
    ),
    SeriesSpec(
        "sagellm_transport_latency_seconds", "histogram",
        "Latency of one KV transport read (request to last chunk verified).", ("backend",), TRANSFER_BUCKETS_S,
    ),
    SeriesSpec(
        "sagellm_transport_resent_chunks", "counter",
        "Transport chunks fetched again after a failed checksum (outcome: recovered or failed).", ("backend", "outcome"),
    ),
    SeriesSpec(
        "sagellm_scheduler_queue_length", "gauge",
        "Sequences in a scheduler queue (waiting, running, ...).", ("queue",),
    ),
    SeriesSpec(
        "sagellm_scheduler_events", "counter",
        "Scheduler decisions: decode rounds ended early (round_cut_all_finished, round_cut_admit_waiting), "
        "requests held out of a decode round (held_from_round), waiting requests left for a later prefill "
        "step (prefill_split), requests rejected (rejected).", ("event",),
    ),
    SeriesSpec(
        "sagellm_slo_misses", "counter",
        "Requests that missed their SLO target (kind: ttft or tpot).", ("kind",),
    ),
    SeriesSpec(
        "sagellm_ttft_seconds", "histogram",
        "Time to first token of streaming requests, measured at the server.", (), LATENCY_BUCKETS_S,
    ),
    SeriesSpec(
        "sagellm_tpot_seconds", "histogram",
        "Mean time per output token after the first, of streaming requests.", (), TOKEN_LATENCY_BUCKETS_S,
    ),
    SeriesSpec(
        "sagellm_request_latency_seconds", "histogram",
        "End-to-end latency of generation requests answered with HTTP 2xx.", ("endpoint",), LATENCY_BUCKETS_S,
    ),
)

GATEWAY_SERIES: tuple[SeriesSpec, ...] = (
    SeriesSpec(
        "sagellm_gateway_requests", "counter",
        "Requests the gateway forwarded, per engine and routing reason.", ("engine", "reason"),
    ),
    SeriesSpec(
        "sagellm_gateway_retries", "counter",
        "Requests retried on another engine after a connection error, per failed engine.", ("engine",),
    ),
    SeriesSpec(
        "sagellm_gateway_errors", "counter",
        "Requests the gateway could not route or forward, per HTTP status it answered.", ("status",),
    ),
    SeriesSpec(
        "sagellm_gateway_engine_healthy", "gauge",
        "1 when the engine is healthy (routable), else 0.", ("engine",),
    ),
    SeriesSpec(
        "sagellm_gateway_in_flight", "gauge",
        "Requests in flight per engine.", ("engine",),
    ),
    SeriesSpec(
        "sagellm_gateway_prefix_affinity", "counter",
        "Routing decisions by prefix affinity outcome (hit: sent to the engine holding the prefix).", ("outcome",),
    ),
)

ALL_SERIES: tuple[SeriesSpec, ...] = ENGINE_SERIES + GATEWAY_SERIES


def series_by_name(series: tuple[SeriesSpec, ...] = ALL_SERIES) -> dict[str, SeriesSpec]:
    """``{name: spec}``; raises ``ValueError`` if two specs share a name."""
    table: dict[str, SeriesSpec] = {}
    for spec in series:
        if spec.name in table:
            raise ValueError(f"series {spec.name!r} is defined twice")
        table[spec.name] = spec
    return table
