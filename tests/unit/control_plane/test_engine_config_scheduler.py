"""The scheduler options of ``sage llm engine start`` (file < env < flag) and their hand-off to the engine."""

import pytest

from sagellm.control_plane.engine_config import EngineStartConfig, engine_start_args
from sagellm.core.config import ConfigError, load_config
from sagellm.scheduler_ir import SchedulerConfig, to_environment


def test_flag_beats_env_beats_file(tmp_path):
    path = tmp_path / "engine.yaml"
    path.write_text("scheduler: priority\nsched_aging_s: 9\n")
    config = load_config(
        EngineStartConfig, file=path, env={"SAGELLM_SCHEDULER": "fair", "SAGELLM_SCHED_TENANT_WEIGHTS": "gold=4"},
        overrides={"scheduler": "slo_aware"},
    )
    assert config.scheduler_config() == SchedulerConfig(
        scheduler="slo_aware", sched_aging_s=9.0, sched_tenant_weights={"gold": 4.0}
    )


def test_unknown_strategy_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"scheduler: got 'edf'; accepted: adaptive, fair, fifo, priority, slo_aware"):
        load_config(EngineStartConfig, overrides={"scheduler": "edf"})


def test_command_line_and_environment_round_trip():
    config = EngineStartConfig(scheduler="fair", sched_tenant_weights={"gold": 4.0, "free": 1.0}, sched_trace="/tmp/p.jsonl")
    args = engine_start_args(config)
    assert args[args.index("--scheduler") + 1] == "fair"
    assert args[args.index("--sched-tenant-weights") + 1] == "free=1.0,gold=4.0"
    env = to_environment(config.scheduler_config())
    assert load_config(SchedulerConfig, env=env) == config.scheduler_config()
