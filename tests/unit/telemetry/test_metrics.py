"""sagellm's Prometheus series: one table, a checked recording API, exact scraped values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sagellm.telemetry import ALL_SERIES, ENGINE_SERIES, GATEWAY_SERIES, GatewayMetrics, SageMetrics, SeriesSpec, series_by_name

DASHBOARD = Path(__file__).resolve().parents[3] / "configs" / "grafana" / "sagellm.json"


def samples(registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_series_table_is_consistent():
    table = series_by_name()
    assert len(table) == len(ALL_SERIES) == len(ENGINE_SERIES) + len(GATEWAY_SERIES)
    for spec in ALL_SERIES:
        assert spec.name.startswith("sagellm_")
    assert table["sagellm_prefix_hit_tokens"].sample_name == "sagellm_prefix_hit_tokens_total"
    assert table["sagellm_ttft_seconds"].sample_name == "sagellm_ttft_seconds"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "prefix_hits", "kind": "counter", "help": "x"}, "starting with 'sagellm_'"),
        ({"name": "sagellm_x_total", "kind": "counter", "help": "x"}, "not ending in '_total'"),
        ({"name": "sagellm_x", "kind": "summary", "help": "x"}, "one of 'counter', 'gauge', 'histogram'"),
        ({"name": "sagellm_x", "kind": "histogram", "help": "x"}, "bucket bounds for histograms"),
        ({"name": "sagellm_x", "kind": "histogram", "help": "x", "buckets": (2.0, 1.0)}, "strictly increasing"),
    ],
)
def test_bad_series_spec_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SeriesSpec(**kwargs)


def test_engine_metrics_record_exact_values():
    registry = CollectorRegistry()
    m = SageMetrics(registry)
    m.prefix_lookup_tokens("device", 128)
    m.prefix_hit_tokens("device", 96)
    m.prefix_hit_tokens("host", 32)
    m.kv_blocks("host", used=40, free=216)
    m.kv_offload("host", nbytes=1 << 20, seconds=0.002)
    m.kv_onload("ssd", nbytes=4096, seconds=0.01)
    m.transport_transfer("shm", nbytes=8_000_000, seconds=0.5)
    m.scheduler_queue_length("waiting", 3)
    m.scheduler_event("held_from_round", 2)
    m.slo_miss("ttft")
    m.observe_ttft(0.2)
    m.observe_tpot(0.02)
    m.observe_request_latency("/v1/completions", 1.5)
    got = samples(registry)
    assert got[("sagellm_prefix_lookup_tokens_total", (("tier", "device"),))] == 128
    assert got[("sagellm_prefix_hit_tokens_total", (("tier", "device"),))] == 96
    assert got[("sagellm_prefix_hit_tokens_total", (("tier", "host"),))] == 32
    assert got[("sagellm_kv_blocks", (("state", "used"), ("tier", "host")))] == 40
    assert got[("sagellm_kv_blocks", (("state", "free"), ("tier", "host")))] == 216
    assert got[("sagellm_kv_transfer_bytes_total", (("direction", "offload"), ("tier", "host")))] == 1 << 20
    assert got[("sagellm_kv_transfer_seconds_count", (("direction", "onload"), ("tier", "ssd")))] == 1
    assert got[("sagellm_transport_bytes_total", (("backend", "shm"),))] == 8_000_000
    assert got[("sagellm_transport_seconds_total", (("backend", "shm"),))] == 0.5
    assert got[("sagellm_transport_bandwidth_bytes_per_second", (("backend", "shm"),))] == 16_000_000
    assert got[("sagellm_scheduler_queue_length", (("queue", "waiting"),))] == 3
    assert got[("sagellm_scheduler_events_total", (("event", "held_from_round"),))] == 2
    assert got[("sagellm_slo_misses_total", (("kind", "ttft"),))] == 1
    assert got[("sagellm_ttft_seconds_bucket", (("le", "0.25"),))] == 1
    assert got[("sagellm_ttft_seconds_bucket", (("le", "0.1"),))] == 0
    assert got[("sagellm_tpot_seconds_sum", ())] == pytest.approx(0.02)
    assert got[("sagellm_request_latency_seconds_count", (("endpoint", "/v1/completions"),))] == 1


def test_nothing_is_created_before_first_use():
    registry = CollectorRegistry()
    SageMetrics(registry)
    assert generate_latest(registry) == b""


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.prefix_hit_tokens("gpu", 1), "tier: got 'gpu'; accepted: one of 'device', 'host', 'ssd', 'remote'"),
        (lambda m: m.prefix_hit_tokens("device", -1), "n: got -1; accepted: an integer >= 0"),
        (lambda m: m.prefix_hit_tokens("device", True), "n: got True"),
        (lambda m: m.kv_offload("host", nbytes=1, seconds=float("nan")), "seconds: got nan"),
        (lambda m: m.scheduler_queue_length("Waiting Queue", 1), "queue: got 'Waiting Queue'"),
        (lambda m: m.slo_miss("e2e"), "kind: got 'e2e'; accepted: one of 'ttft', 'tpot'"),
        (lambda m: m.scheduler_event("preempted"), "event: got 'preempted'"),
        (lambda m: m.observe_request_latency("v1/chat", 1.0), "endpoint: got 'v1/chat'"),
    ],
)
def test_bad_arguments_raise_instead_of_creating_series(call, message):
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match=re.escape(message)):
        call(SageMetrics(registry))
    assert generate_latest(registry) == b""  # no series was created for the bad call


def test_gateway_metrics():
    registry = CollectorRegistry()
    g = GatewayMetrics(registry)
    g.routed("sagellm-1", "prefix_affinity")
    g.routed("sagellm-1", "prefix_affinity")
    g.retried("sagellm-2")
    g.error(503)
    g.engine_state("sagellm-2", healthy=False, in_flight=0)
    g.prefix_affinity("hit")
    got = samples(registry)
    assert got[("sagellm_gateway_requests_total", (("engine", "sagellm-1"), ("reason", "prefix_affinity")))] == 2
    assert got[("sagellm_gateway_retries_total", (("engine", "sagellm-2"),))] == 1
    assert got[("sagellm_gateway_errors_total", (("status", "503"),))] == 1
    assert got[("sagellm_gateway_engine_healthy", (("engine", "sagellm-2"),))] == 0
    assert got[("sagellm_gateway_prefix_affinity_total", (("outcome", "hit"),))] == 1


def test_dashboard_plots_only_defined_series_and_all_of_them():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bsagellm_[a-z0-9_]+", expr):
            base = re.sub(r"(_total|_bucket|_sum|_count)$", "", name)
            used.add(base)
    defined = set(series_by_name())
    assert used <= defined, used - defined
    assert used == defined, defined - used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
