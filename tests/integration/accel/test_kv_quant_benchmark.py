"""``benchmarks/kv_quant.py`` on a small budget: capacity ratios and full concurrency (not timing)."""

from __future__ import annotations

import pytest

from tests.integration.accel.scripts import load_kv_bench

pytestmark = pytest.mark.slow


def test_fixed_budget_capacity_and_concurrency(tiny_model_dir):
    bench = load_kv_bench()
    model = str(tiny_model_dir("llama"))
    args = bench.parse_args(["--model", model, "--kv-budget-mib", "1", "--prompt-len", "24", "--new-tokens", "8",
                             "--common-batch", "2", "--repeats", "1", "--no-write"])
    shape = bench.model_shape(model)
    names = ("float32", "bfloat16", "int8/bf16", "fp8_e4m3/bf16")
    results = [bench.run_config(bench.CONFIGS[name], args, shape) for name in names]
    bench.add_ratios(results)
    fp32, bf16, int8, fp8 = results
    for r in results:
        # the engine allocated exactly what the schema says, within the budget ...
        assert r["kv_bytes_allocated"] == r["num_blocks"] * r["bytes_per_block"] <= r["kv_bytes_budget"]
        # ... and every sequence of the capacity pass ran at once, was never preempted and finished
        assert r["at_capacity"]["peak_running"] == r["max_concurrent_sequences"]
        assert r["at_capacity"]["preemptions"] == 0
        assert r["at_capacity"]["all_tokens"] and r["at_common_batch"]["all_tokens"]
    assert int8["cache_tensor_dtypes"] == ["bfloat16", "uint8"]  # codes + scale/zero in the model dtype
    assert fp8["cache_tensor_dtypes"] == ["bfloat16", "float8_e4m3fn"]  # policy 8's layout in float8
    assert (fp8["kv_dtype"], fp8["quant_policy"]) == ("fp8_e4m3", 8)
    # same bytes as int8 (one byte per element + scale/zero), hence the same capacity
    assert (fp8["bytes_per_token"], fp8["max_concurrent_sequences"]) == (int8["bytes_per_token"],
                                                                         int8["max_concurrent_sequences"])
    # tiny llama: 4 layers x 2 KV heads x head_dim 64 -> 4096 / 2048 / 1088 bytes per token
    assert (fp32["bytes_per_token"], bf16["bytes_per_token"], int8["bytes_per_token"]) == (4096, 2048, 1088)
    assert int8["sequences_vs_bfloat16"] >= 1.8
    assert int8["sequences_vs_float32"] >= 3.5
