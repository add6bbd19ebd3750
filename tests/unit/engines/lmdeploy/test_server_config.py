"""``EngineServerConfig`` -> LMDeploy's ``PytorchEngineConfig``: the decode round length."""

from __future__ import annotations

import pytest

from sagellm.accel.spec_decode import SpecDecodeProfile
from sagellm.engines.lmdeploy.server import EngineServerConfig, build_engine_config
from sagellm.scheduler_ir.config import SchedulerConfig


@pytest.mark.parametrize("scheduler, spec_tokens, device, expected", [
    (None, None, "cpu", 16),         # LMDeploy's default
    ("fifo", None, "cpu", 16),
    ("slo_aware", None, "cpu", 4),   # short rounds: arrivals are admitted sooner
    ("fifo", 4, "cpu", 4),           # ceil(16 / (4 + 1)): little work after a stop
    ("fifo", 1, "cpu", 8),
    ("slo_aware", 1, "cpu", 4),      # the shorter of the two
    ("fifo", 4, "cuda", 16),         # asynchronous device: LMDeploy's rounds
])
def test_prefill_interval(tmp_path, scheduler, spec_tokens, device, expected):
    config = EngineServerConfig(
        model=str(tmp_path),
        scheduler=None if scheduler is None else SchedulerConfig(scheduler=scheduler),
        spec_decode=None if spec_tokens is None else SpecDecodeProfile(draft_model="/d", num_speculative_tokens=spec_tokens),
    )
    assert build_engine_config(config, device).prefill_interval == expected
