"""Read a server's Prometheus ``/metrics``: prefix hits per tier, KV cache usage, prompt tokens.

Which series a peer exports depends on the server:

* sagellm (``metrics`` plugin): ``sagellm_prefix_lookup_tokens_total{tier}``,
  ``sagellm_prefix_hit_tokens_total{tier}``, ``sagellm_kv_blocks{tier,state}``, plus LMDeploy's own
  ``lmdeploy:*`` series;
* stock LMDeploy: ``lmdeploy:gpu_cache_usage_perc`` and ``lmdeploy:prompt_tokens_total`` when its metrics
  are on (no prefix statistics);
* vLLM: ``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total`` (tokens),
  ``vllm:kv_cache_usage_perc``, ``vllm:prompt_tokens_total``.

:func:`extract` turns a scrape into a flat ``{name: value}`` map with uniform names; counters are
differenced across a scenario by :func:`counter_delta`.
"""

from __future__ import annotations

import urllib.request

__all__ = ["COUNTERS", "GAUGES", "counter_delta", "extract", "parse", "scrape"]

#: uniform counter names in :func:`extract`'s output
COUNTERS = ("prefix_hit_tokens.device", "prefix_hit_tokens.host", "prefix_hit_tokens.ssd", "prefix_hit_tokens.remote",
            "prefix_lookup_tokens", "prompt_tokens_counted")
#: uniform gauge names
GAUGES = ("kv_usage", "kv_blocks_used.device", "kv_blocks_total.device", "kv_blocks_used.host", "kv_blocks_total.host")


def scrape(base_url: str, timeout_s: float = 5.0) -> str | None:
    """The ``/metrics`` text, or None when the server has none."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as response:  # noqa: S310
            if response.status != 200:
                return None
            return response.read().decode(errors="replace")
    except OSError:
        return None


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """``(sample name, labels, value)`` of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.append((sample.name, dict(sample.labels), float(sample.value)))
    return out


def extract(text: str | None) -> dict[str, float]:
    """Uniform metric names -> values (only those the server exports)."""
    if not text:
        return {}
    out: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        out[key] = out.get(key, 0.0) + value

    for name, labels, value in parse(text):
        if name == "sagellm_prefix_hit_tokens_total":
            add(f"prefix_hit_tokens.{labels.get('tier', '?')}", value)
        elif name == "sagellm_prefix_lookup_tokens_total" and labels.get("tier") == "device":
            add("prefix_lookup_tokens", value)
        elif name == "sagellm_kv_blocks" and labels.get("tier") in ("device", "host"):
            tier = labels["tier"]
            add(f"kv_blocks_total.{tier}", value)
            if labels.get("state") == "used":
                add(f"kv_blocks_used.{tier}", value)
        elif name == "vllm:prefix_cache_hits_total":
            add("prefix_hit_tokens.device", value)
        elif name == "vllm:prefix_cache_queries_total":
            add("prefix_lookup_tokens", value)
        elif name in ("vllm:kv_cache_usage_perc", "lmdeploy:gpu_cache_usage_perc"):
            out["kv_usage"] = max(out.get("kv_usage", 0.0), value)
        elif name in ("vllm:prompt_tokens_total", "lmdeploy:prompt_tokens_total"):
            add("prompt_tokens_counted", value)
    if "kv_usage" not in out and out.get("kv_blocks_total.device"):
        out["kv_usage"] = out.get("kv_blocks_used.device", 0.0) / out["kv_blocks_total.device"]
    return out


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` for the counters present in ``after`` (a counter absent before counts from 0)."""
    return {k: after[k] - before.get(k, 0.0) for k in COUNTERS if k in after}
