"""From request records and server samples to the metrics of one (scenario, peer, repetition).

:data:`METRICS` names every reported metric, its unit and whether higher is better; ratios between
peers are always oriented so that > 1 means "better than the reference" (:func:`better_ratio`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sagellm.bench.client import RequestRecord
from sagellm.bench.stats import PERCENTILES, distribution, median, ratio

__all__ = ["METRICS", "MetricInfo", "SLO", "better_ratio", "roofline_metrics", "scenario_metrics"]


@dataclass(frozen=True)
class MetricInfo:
    label: str
    unit: str
    higher_is_better: bool


def _latency_metrics() -> dict[str, MetricInfo]:
    out = {}
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "E2E latency")):
        for p in PERCENTILES:
            out[f"{name}_p{p}"] = MetricInfo(f"{label} p{p}", "s", False)
        out[f"{name}_mean"] = MetricInfo(f"{label} mean", "s", False)
    return out


METRICS: dict[str, MetricInfo] = {
    "output_throughput": MetricInfo("output throughput", "tok/s", True),
    "total_throughput": MetricInfo("total throughput (prompt + output)", "tok/s", True),
    "request_throughput": MetricInfo("request throughput", "req/s", True),
    **_latency_metrics(),
    "goodput_requests": MetricInfo("goodput (requests meeting their SLO)", "req/s", True),
    "goodput_tokens": MetricInfo("goodput (output tokens of requests meeting their SLO)", "tok/s", True),
    "slo_attainment": MetricInfo("SLO attainment", "fraction", True),
    "prefill_tokens_computed": MetricInfo("prefill tokens computed", "tokens", False),
    "prefix_hit_rate": MetricInfo("prefix hit rate (all tiers)", "fraction", True),
    "kv_usage_max": MetricInfo("peak device KV usage", "fraction", False),
    "cpu_s_per_1k_output_tokens": MetricInfo("server CPU-seconds per 1K output tokens", "s", False),
    "rss_max_mib": MetricInfo("peak server RSS", "MiB", False),
    "tokens_per_chunk": MetricInfo("output tokens per streamed chunk", "tokens", False),
    "mfu_prefill": MetricInfo("prefill MFU (batch 1)", "fraction", True),
    "mbu_decode": MetricInfo("decode MBU (batch 1)", "fraction", True),
    "decode_tokens_per_s_batch1": MetricInfo("decode tokens/s (batch 1)", "tok/s", True),
    "prefill_tokens_per_s_batch1": MetricInfo("prefill tokens/s (batch 1)", "tok/s", True),
}


@dataclass(frozen=True)
class SLO:
    """Targets of one SLO class; a request meets its SLO when both hold (TPOT only with >= 2 tokens)."""

    ttft_s: float
    tpot_s: float

    def met(self, record: RequestRecord) -> bool:
        if not record.ok or record.ttft_s is None:
            return False
        tpot = record.tpot_s
        return record.ttft_s <= self.ttft_s and (tpot is None or tpot <= self.tpot_s)


def better_ratio(metric: str, value: float | None, reference: float | None) -> float | None:
    """How many times better ``value`` is than ``reference`` (> 1: better), by the metric's direction."""
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if METRICS[metric].higher_is_better:
        return ratio(value, reference)
    return ratio(reference, value)


def scenario_metrics(records: Sequence[RequestRecord], wall_s: float, slo: Mapping[str, SLO],
                     server: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of one run of a scenario against one peer.

    ``server`` carries what was sampled at the server: ``counters`` (deltas of :mod:`sagellm.bench.scrape`
    counters), ``gauges_max`` (peak gauges), ``cpu_s`` (process-tree CPU seconds), ``rss_max_bytes``.
    """
    server = server or {}
    ok = [r for r in records if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    prompt_reported = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    prompt_tokens = sum(prompt_reported) if len(prompt_reported) == len(ok) else None
    m: dict[str, Any] = {
        "requests": len(records),
        "errors": len(records) - len(ok),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "wall_s": wall_s,
        "output_throughput": out_tokens / wall_s if wall_s > 0 else None,
        "total_throughput": (out_tokens + (prompt_tokens or 0)) / wall_s if wall_s > 0 and prompt_tokens is not None else None,
        "request_throughput": len(ok) / wall_s if wall_s > 0 else None,
    }
    m.update(distribution("ttft", [r.ttft_s for r in ok]))
    m.update(distribution("tpot", [r.tpot_s for r in ok]))
    m.update(distribution("itl", [gap for r in ok for gap in r.itl_s]))
    m.update(distribution("e2e", [r.e2e_s for r in ok]))
    chunks = sum(r.chunks for r in ok)
    m["tokens_per_chunk"] = out_tokens / chunks if chunks else None
    m["one_chunk_requests"] = sum(1 for r in ok if r.chunks == 1 and r.output_tokens > 1)

    # goodput under SLOs (errors and unfinished requests miss their SLO)
    if slo:
        met = [r for r in records if r.slo_class in slo and slo[r.slo_class].met(r)]
        judged = [r for r in records if r.slo_class in slo]
        m["slo_attainment"] = len(met) / len(judged) if judged else None
        m["goodput_requests"] = len(met) / wall_s if wall_s > 0 else None
        m["goodput_tokens"] = sum(r.output_tokens for r in met) / wall_s if wall_s > 0 else None
        m["slo_attainment_by_class"] = {
            cls: (sum(1 for r in records if r.slo_class == cls and target.met(r))
                  / max(1, sum(1 for r in records if r.slo_class == cls)))
            for cls, target in sorted(slo.items()) if any(r.slo_class == cls for r in records)
        }

    # prefix reuse, from the server's counters (None when it does not export them)
    counters = server.get("counters") or {}
    hits = {k.split(".", 1)[1]: v for k, v in counters.items() if k.startswith("prefix_hit_tokens.")}
    cached_reported = [r.cached_tokens for r in ok if r.cached_tokens is not None]
    if not hits and cached_reported and len(cached_reported) == len(ok):
        hits = {"device": float(sum(cached_reported))}
    if hits and prompt_tokens:
        total_hits = sum(hits.values())
        m["prefix_hit_tokens"] = {tier: int(v) for tier, v in sorted(hits.items()) if v}
        m["prefix_hit_rate"] = total_hits / prompt_tokens
        m["prefix_hit_rate_by_tier"] = {tier: v / prompt_tokens for tier, v in sorted(hits.items()) if v}
        m["prefill_tokens_computed"] = int(prompt_tokens - total_hits)
    if cached_reported:
        m["cached_tokens_reported"] = int(sum(cached_reported))

    gauges = server.get("gauges_max") or {}
    if "kv_usage" in gauges:
        m["kv_usage_max"] = gauges["kv_usage"]
    if server.get("rss_max_bytes"):
        m["rss_max_mib"] = server["rss_max_bytes"] / 2**20
    if server.get("cpu_s") is not None:
        m["server_cpu_s"] = server["cpu_s"]
        m["cpu_s_per_1k_output_tokens"] = server["cpu_s"] / (out_tokens / 1000) if out_tokens else None
    if server.get("client_cpu_s") is not None:
        m["client_cpu_s"] = server["client_cpu_s"]
    if server.get("others_cpu_s") is not None:
        m["other_peers_cpu_s"] = server["others_cpu_s"]
    return m


def roofline_metrics(records: Sequence[RequestRecord], shape: dict, dtype: str, peak: Mapping[str, Any]) -> dict[str, Any]:
    """Prefill MFU and decode MBU at batch 1 from the ``roofline`` workload's probes (see its docstring)."""
    from sagellm.bench.peak import decode_bytes, decode_flops, prefill_flops

    def by(tag: str) -> list[RequestRecord]:
        return [r for r in records if r.ok and r.tag == tag and r.e2e_s]

    prefill, base, decode = by("prefill"), by("base"), by("decode")
    out: dict[str, Any] = {}
    peak_flops = (peak.get("matmul_flops") or {}).get(dtype)
    peak_bw = peak.get("mem_bandwidth_bytes_per_s")
    if prefill:
        tokens = median([r.prompt_tokens for r in prefill]) or 0
        t = median([r.e2e_s for r in prefill])
        flops = prefill_flops(shape, int(tokens))
        out["prefill_probe_tokens"] = tokens
        out["prefill_s_batch1"] = t
        out["prefill_tokens_per_s_batch1"] = tokens / t
        out["prefill_flops_per_s"] = flops / t
        out["mfu_prefill"] = flops / t / peak_flops if peak_flops else None
    if base and decode:
        n = median([r.output_tokens for r in decode]) or 0
        step = (median([r.e2e_s for r in decode]) - median([r.e2e_s for r in base])) / max(1, n - 1)
        if step > 0:
            context = int((median([r.prompt_tokens for r in decode]) or 0) + n / 2)
            nbytes = decode_bytes(shape, context, dtype)
            out["decode_s_per_token_batch1"] = step
            out["decode_tokens_per_s_batch1"] = 1 / step
            out["decode_bytes_per_token"] = nbytes
            out["decode_flops_per_s"] = decode_flops(shape, context) / step
            out["mbu_decode"] = nbytes / step / peak_bw if peak_bw else None
    return out
