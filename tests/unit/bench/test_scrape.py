"""Uniform names for the prefix and KV series each kind of server exports."""

from __future__ import annotations

from sagellm.bench.scrape import counter_delta, extract

SAGELLM = """
# TYPE sagellm_prefix_hit_tokens_total counter
sagellm_prefix_hit_tokens_total{tier="device"} 128.0
sagellm_prefix_hit_tokens_total{tier="host"} 64.0
# TYPE sagellm_prefix_lookup_tokens_total counter
sagellm_prefix_lookup_tokens_total{tier="device"} 1000.0
# TYPE lmdeploy:gpu_cache_usage_perc gauge
lmdeploy:gpu_cache_usage_perc{engine="0"} 0.25
"""
VLLM = """
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 211.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 211.0
"""


def test_sagellm_series():
    assert extract(SAGELLM) == {"prefix_hit_tokens.device": 128.0, "prefix_hit_tokens.host": 64.0,
                                "prefix_lookup_tokens": 1000.0, "kv_usage": 0.25}


def test_vllm_series():
    assert extract(VLLM) == {"prefix_lookup_tokens": 211.0, "prefix_hit_tokens.device": 64.0, "kv_usage": 0.5,
                             "prompt_tokens_counted": 211.0}


def test_nothing_to_extract_and_deltas():
    assert extract(None) == {} and extract("") == {}
    before, after = extract(VLLM), extract(VLLM.replace("64.0", "100.0"))
    assert counter_delta(before, after) == {"prefix_hit_tokens.device": 36.0, "prefix_lookup_tokens": 0.0,
                                            "prompt_tokens_counted": 0.0}
    assert counter_delta({}, {"prefix_hit_tokens.ssd": 5.0, "kv_usage": 0.1}) == {"prefix_hit_tokens.ssd": 5.0}
