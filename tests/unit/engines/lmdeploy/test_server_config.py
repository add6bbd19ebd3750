"""``EngineServerConfig`` -> LMDeploy's ``PytorchEngineConfig``: the decode round length, the KV quant policy."""

from __future__ import annotations

import pytest

from sagellm.accel.spec_decode import SpecDecodeProfile
from sagellm.engines.lmdeploy.server import EngineServerConfig, build_engine_config, kv_storage_environment
from sagellm.scheduler_ir.config import SchedulerConfig


@pytest.mark.parametrize("scheduler, spec_tokens, device, expected", [
    (None, None, "cpu", 16),         # LMDeploy's default
    ("fifo", None, "cpu", 16),
    ("slo_aware", None, "cpu", 16),  # LMDeploy's rounds: shorter ones lost goodput on the cpu
    ("fifo", 4, "cpu", 4),           # ceil(16 / (4 + 1)): little work after a stop
    ("fifo", 1, "cpu", 8),
    ("slo_aware", 1, "cpu", 8),
    ("fifo", 4, "cuda", 16),         # asynchronous device: LMDeploy's rounds
])
def test_prefill_interval(tmp_path, scheduler, spec_tokens, device, expected):
    config = EngineServerConfig(
        model=str(tmp_path),
        scheduler=None if scheduler is None else SchedulerConfig(scheduler=scheduler),
        spec_decode=None if spec_tokens is None else SpecDecodeProfile(draft_model="/d", num_speculative_tokens=spec_tokens),
    )
    assert build_engine_config(config, device).prefill_interval == expected


@pytest.mark.parametrize("kv_dtype, policy", [("auto", 0), ("int8", 8), ("int4", 4), ("fp8_e4m3", 8), ("fp8_e5m2", 8)])
def test_kv_dtype_on_cpu(tmp_path, kv_dtype, policy):
    config = EngineServerConfig(model=str(tmp_path), kv_dtype=kv_dtype)
    assert build_engine_config(config, "cpu").quant_policy == policy
    # the spawned engine process picks its KV storage dtype from this
    assert kv_storage_environment(config, "cpu") == {"SAGELLM_KV_DTYPE": kv_dtype}


def test_fp8_kv_dtype_rejected_on_cuda(tmp_path):
    config = EngineServerConfig(model=str(tmp_path), kv_dtype="fp8_e4m3")
    with pytest.raises(ValueError) as err:
        build_engine_config(config, "cuda")
    assert str(err.value) == (
        "QuantizationProfile.kv_dtype: got 'fp8_e4m3' on device 'cuda'; LMDeploy 0.11 has no fp8 KV cache there "
        "(sagellm's kernels serve it on 'cpu' only); accepted on 'cuda': 'auto', 'int8', 'int4'"
    )
    assert kv_storage_environment(EngineServerConfig(model=str(tmp_path), kv_dtype="int8"), "cuda") == {}
