"""Quantized KV (int8 / int4 / fp8_e4m3 / fp8_e5m2; quant_policy 8 / 4 / 8 / 8) through the real engine on the cpu device.

The oracle: ``transformers`` with a KV cache that passes every new K/V through the same
per-token-per-head grid (``sagellm.accel.quantization``). The engine's quantized logits must sit
on top of it -- far closer than either is to float KV.
"""

from __future__ import annotations

import pytest
import torch

from sagellm.accel.quantization import QuantSpec, fake_quantize
from tests.integration.accel.scripts import load_guard

pytestmark = pytest.mark.slow

KV_DTYPES = ["int8", "int4", "fp8_e4m3", "fp8_e5m2"]
#: kv_dtype -> (element type of the K/V caches, last dim of the tiny llama's cache: head_dim 64, int4 packs two per byte)
CACHE = {"int8": (torch.uint8, 64), "int4": (torch.uint8, 32), "fp8_e4m3": (torch.float8_e4m3fn, 64),
         "fp8_e5m2": (torch.float8_e5m2, 64)}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return str(tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def guard():
    guard = load_guard()
    yield guard
    from sagellm.engines.lmdeploy.cpu.device import set_kv_quant_storage

    set_kv_quant_storage("auto")  # build_pipeline chose a storage dtype for this process; leave LMDeploy's default


def _quantizing_cache(kv_dtype: str):
    """A transformers DynamicCache that stores (and attends over) K/V rounded through ``kv_dtype``."""
    from transformers import DynamicCache

    spec = QuantSpec(kv_dtype)  # per token per head over head_dim, as LMDeploy quantizes

    class QuantizingCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
            # [batch, kv_heads, tokens, head_dim]: the last axis is one token's vector of one head
            return super().update(fake_quantize(key_states, spec), fake_quantize(value_states, spec),
                                  layer_idx, cache_kwargs)

    return QuantizingCache()


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_cache_engine_allocates_lmdeploy_layout(model_dir, guard, kv_dtype):
    cfg = guard.GuardConfig(model=model_dir, num_gpu_blocks=32, max_batch_size=4)
    pipe = guard.build_pipeline(cfg, kv_dtype)
    try:
        prompts = [[1, 50, 60, 70], [1, 80, 90]]
        out = guard.greedy_tokens(pipe, prompts, 8)
        cache_engine = pipe.engine.executor.model_agent.cache_engine
        k_cache, v_cache, k_sz, v_sz = cache_engine.full_gpu_cache
    finally:
        pipe.close()
    storage, head_dim = CACHE[kv_dtype]
    assert [len(o) for o in out] == [8, 8]
    assert k_cache.dtype == v_cache.dtype == storage
    assert tuple(k_cache.shape) == (4, 32, 16, 2, head_dim)  # layers, blocks, block_size, kv_heads, dim
    assert tuple(k_sz.shape) == tuple(v_sz.shape) == (4, 32, 16, 2, 2)
    assert k_sz.dtype == torch.float32  # the model dtype, as LMDeploy stores scale/zero


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_engine_matches_transformers_with_the_same_kv_grid(model_dir, guard, kv_dtype, monkeypatch, request):
    from lmdeploy.tokenizer import Tokenizer
    from transformers import AutoModelForCausalLM

    from sagellm.engines.lmdeploy.cpu import step_state
    from sagellm.engines.lmdeploy.cpu.config import cpu_device_config

    # the same grid needs bitwise the same K/V: oneDNN's packed linear rounds differently from the
    # F.linear transformers runs, the native RMSNorm sums its squares in another order, and a value
    # on a rounding boundary then lands one code off; and the engine's matmuls run on as many threads
    # as the reference's (it otherwise picks per forward, from the work and the cores left free)
    monkeypatch.setenv("SAGELLM_CPU_PACKED_LINEAR", "0")
    monkeypatch.setenv("SAGELLM_CPU_NATIVE_KERNELS", "0")
    monkeypatch.setenv("SAGELLM_CPU_THREADS", str(torch.get_num_threads()))
    monkeypatch.setattr(step_state, "_policies", {})  # thread policies built from the earlier settings
    cpu_device_config.cache_clear()
    request.addfinalizer(cpu_device_config.cache_clear)  # later tests read the environment again

    prompts = guard.make_prompts(Tokenizer(model_dir), 8, seed=3)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        hf_generated = []
        for ids in prompts:
            inputs = torch.tensor([ids])
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs),
                                 past_key_values=_quantizing_cache(kv_dtype), max_new_tokens=24,
                                 min_new_tokens=24, do_sample=False, pad_token_id=0)
            hf_generated.append(out[0, len(ids):].tolist())
        sequences = [p + g for p, g in zip(prompts, hf_generated)]
        hf_quant = [model(torch.tensor([s]), past_key_values=_quantizing_cache(kv_dtype), use_cache=True).logits[0]
                    for s in sequences]
        hf_float = [model(torch.tensor([s])).logits[0] for s in sequences]

    pipe = guard.build_pipeline(guard.GuardConfig(model=model_dir), kv_dtype)
    try:
        engine_generated = guard.greedy_tokens(pipe, prompts, 24)
        engine_quant = [row.float() for row in guard.sequence_logits(pipe, sequences)]
    finally:
        pipe.close()

    def mean_abs(a, b):
        return torch.cat([(x - y).abs().flatten() for x, y in zip(a, b)]).mean().item()

    to_oracle = mean_abs(engine_quant, hf_quant)
    quant_effect = mean_abs(hf_quant, hf_float)
    # rounding-boundary ties (a code one step off) are the only expected difference
    assert to_oracle < 1e-4, to_oracle
    assert to_oracle < quant_effect / 20, (to_oracle, quant_effect)
    agreement = sum(sum(int(a == b) for a, b in zip(e, h)) for e, h in zip(engine_generated, hf_generated))
    agreement /= 24 * len(prompts)
    print(f"\n{kv_dtype}: mean |logit(engine) - logit(transformers, same grid)| = {to_oracle:.2e}; "
          f"vs float KV {quant_effect:.2e}; greedy agreement with transformers {agreement:.3f}")
    assert agreement >= 0.95, (engine_generated, hf_generated)


@pytest.mark.parametrize("kv_dtype, policy", [("auto", 0), ("int8", 8), ("int4", 4), ("fp8_e4m3", 8), ("fp8_e5m2", 8)])
def test_engine_start_kv_dtype_maps_to_quant_policy(model_dir, kv_dtype, policy):
    """``sage llm engine start --kv-dtype`` -> EngineServerConfig -> PytorchEngineConfig.quant_policy."""
    from sagellm.engines.lmdeploy.server import EngineServerConfig, build_engine_config

    config = build_engine_config(EngineServerConfig(model=model_dir, kv_dtype=kv_dtype), "cpu")
    assert config.quant_policy == policy
