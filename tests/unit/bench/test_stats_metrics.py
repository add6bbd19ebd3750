"""Percentiles, per-scenario metrics, goodput, prefix accounting and the roofline arithmetic (exact values)."""

from __future__ import annotations

import pytest

from sagellm.bench.metrics import SLO, better_ratio, roofline_metrics, scenario_metrics
from sagellm.bench.peak import decode_bytes, matmul_params, prefill_flops
from sagellm.bench.stats import distribution, percentile, ratio
from tests.unit.bench.fakes import fake_record

SHAPE = {"hidden_size": 8, "head_dim": 2, "num_heads": 4, "num_kv_heads": 2, "num_layers": 3,
         "intermediate_size": 16, "vocab_size": 32}


def test_percentile_interpolates_between_ranks():
    assert percentile([4, 1, 3, 2], 0.5) == 2.5
    assert percentile([1, 2, 3, 4, 5], 0.95) == 4.8
    assert percentile([7], 0.99) == 7
    assert percentile([], 0.5) is None
    assert percentile([None, 3.0], 0.5) == 3.0
    with pytest.raises(ValueError, match="q must be in"):
        percentile([1], 1.5)


def test_distribution_and_ratio():
    assert distribution("x", [1.0, 3.0]) == {"x_p50": 2.0, "x_p95": 2.9, "x_p99": 2.98, "x_mean": 2.0}
    assert distribution("x", []) == {"x_p50": None, "x_p95": None, "x_p99": None, "x_mean": None}
    assert ratio(6, 3) == 2 and ratio(1, 0) is None and ratio(None, 2) is None


def test_better_ratio_is_oriented_so_more_is_better():
    assert better_ratio("output_throughput", 200.0, 100.0) == 2.0  # higher is better: peer / reference
    assert better_ratio("ttft_p50", 0.5, 1.0) == 2.0  # lower is better: reference / peer
    assert better_ratio("cpu_s_per_1k_output_tokens", 4.0, 2.0) == 0.5
    with pytest.raises(KeyError, match="unknown metric"):
        better_ratio("speed", 1.0, 1.0)


def test_scenario_metrics_throughput_latency_goodput():
    records = [
        fake_record(0, ttft=0.5, e2e=1.4, out=10, prompt=100, itl=[0.1] * 9),  # tpot 0.1: meets TTFT 1 s / TPOT 0.2 s
        fake_record(1, ttft=1.5, e2e=2.4, out=10, prompt=50, itl=[0.1] * 9),  # misses TTFT
        fake_record(2, error="HTTP 500: boom"),
    ]
    m = scenario_metrics(records, wall_s=2.0, slo={"default": SLO(ttft_s=1.0, tpot_s=0.2)})
    assert m["requests"] == 3 and m["errors"] == 1
    assert m["output_tokens"] == 20 and m["prompt_tokens"] == 150
    assert m["output_throughput"] == 10.0 and m["total_throughput"] == 85.0 and m["request_throughput"] == 1.0
    assert m["ttft_p50"] == 1.0 and m["e2e_p50"] == pytest.approx(1.9)
    assert m["tpot_p50"] == pytest.approx(0.1) and m["itl_p99"] == pytest.approx(0.1)
    assert m["tokens_per_chunk"] == 1.0 and m["one_chunk_requests"] == 0
    assert m["slo_attainment"] == pytest.approx(1 / 3)  # the failed request counts as a miss
    assert m["goodput_requests"] == 0.5 and m["goodput_tokens"] == 5.0
    assert "prefix_hit_rate" not in m  # the server reported no prefix statistics


def test_one_chunk_streams_are_flagged():
    m = scenario_metrics([fake_record(0, ttft=2.0, e2e=2.0, out=64, chunks=1)], wall_s=2.0, slo={})
    assert m["tokens_per_chunk"] == 64.0 and m["one_chunk_requests"] == 1 and m["tpot_p50"] == 0.0


def test_prefix_accounting_from_server_counters_and_usage():
    records = [fake_record(0, prompt=600), fake_record(1, prompt=400)]
    server = {"counters": {"prefix_hit_tokens.device": 300.0, "prefix_hit_tokens.host": 200.0,
                           "prefix_hit_tokens.ssd": 0.0, "prefix_lookup_tokens": 1000.0},
              "gauges_max": {"kv_usage": 0.25}, "cpu_s": 4.0, "rss_max_bytes": 3 * 2**20}
    m = scenario_metrics(records, wall_s=1.0, slo={}, server=server)
    assert m["prefill_tokens_computed"] == 500 and m["prefix_hit_rate"] == 0.5
    assert m["prefix_hit_tokens"] == {"device": 300, "host": 200}
    assert m["prefix_hit_rate_by_tier"] == {"device": 0.3, "host": 0.2}
    assert m["kv_usage_max"] == 0.25 and m["rss_max_mib"] == 3.0
    assert m["cpu_s_per_1k_output_tokens"] == 200.0  # 4 CPU-s for 20 output tokens
    # vLLM-style: cached tokens in the usage of every response and no counters
    m = scenario_metrics([fake_record(0, prompt=600, cached=512)], wall_s=1.0, slo={})
    assert m["prefill_tokens_computed"] == 88 and m["cached_tokens_reported"] == 512


def test_model_accounting():
    p = matmul_params(SHAPE)
    # per layer: q 8*8 + k,v 2*8*4 + o 8*8 + mlp 3*8*16 = 64 + 64 + 64 + 384 = 576; 3 layers
    assert p == {"layers": 1728, "lm_head": 256}
    # 4 new tokens after 0 cached: keys 1+2+3+4 = 10; attention 4 * 10 * 4 heads * 2 dim * 3 layers = 960
    assert prefill_flops(SHAPE, 4) == 2 * 1728 * 4 + 2 * 256 + 960
    # one decode step reads every matmul weight once + K and V of 10 tokens (2 * 3 layers * 2 heads * 2 dim)
    assert decode_bytes(SHAPE, 10, "float32") == (1728 + 256) * 4 + 2 * 3 * 2 * 2 * 10 * 4


def test_roofline_metrics_from_probes():
    records = [fake_record(0, e2e=0.5, prompt=4, out=1, tag="prefill"),
               fake_record(1, e2e=0.1, prompt=2, out=1, tag="base"),
               fake_record(2, e2e=1.1, prompt=2, out=11, tag="decode")]
    peak = {"matmul_flops": {"float32": 1e6}, "mem_bandwidth_bytes_per_s": 1e5}
    m = roofline_metrics(records, SHAPE, "float32", peak)
    assert m["prefill_tokens_per_s_batch1"] == 8.0
    assert m["mfu_prefill"] == pytest.approx(prefill_flops(SHAPE, 4) / 0.5 / 1e6)
    assert m["decode_s_per_token_batch1"] == pytest.approx(0.1)  # (1.1 - 0.1) / (11 - 1)
    # context at mid-decode: 2 prompt tokens + 11 / 2 -> 7
    assert m["mbu_decode"] == pytest.approx(decode_bytes(SHAPE, 7, "float32") / 0.1 / 1e5)
