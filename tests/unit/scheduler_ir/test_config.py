import pytest

from sagellm.core.config import ConfigError, load_config
from sagellm.scheduler_ir import SchedulerConfig, StrategyOptions, to_environment


def test_env_round_trip_of_every_option():
    config = SchedulerConfig(
        scheduler="fair", sched_trace="/tmp/t.jsonl", sched_aging_s=2.5, sched_chunk_tokens=128,
        sched_on_unattainable="defer", sched_tenant_weights={"gold": 4.0, "free": 1.0}, sched_decode_loops=3,
        sched_round_cut=False, sched_prefill_split=False, sched_decode_pacing=True, sched_tpot_reserve=0.25,
    )
    env = to_environment(config)
    assert env["SAGELLM_SCHED_TPOT_RESERVE"] == "0.25"
    assert env["SAGELLM_SCHEDULER"] == "fair"
    assert env["SAGELLM_SCHED_TENANT_WEIGHTS"] == "free=1.0,gold=4.0"
    assert load_config(SchedulerConfig, env=env) == config


def test_defaults_are_lmdeploy_fifo():
    config = load_config(SchedulerConfig, env={})
    assert config.scheduler == "fifo" and config.sched_trace is None
    assert config.options() == StrategyOptions(aging_s=5.0, chunk_tokens=0, on_unattainable="reject")


def test_bad_values_name_the_option_and_the_accepted_values():
    with pytest.raises(ConfigError, match=r"scheduler: got 'lottery'; accepted: adaptive, fair, fifo, priority, slo_aware"):
        load_config(SchedulerConfig, env={"SAGELLM_SCHEDULER": "lottery"})
    with pytest.raises(ConfigError, match=r"sched_on_unattainable.*'drop'"):
        load_config(SchedulerConfig, env={"SAGELLM_SCHED_ON_UNATTAINABLE": "drop"})
    with pytest.raises(ConfigError, match=r"tenant_weights"):
        load_config(SchedulerConfig, env={"SAGELLM_SCHED_TENANT_WEIGHTS": "a=-1"})
    with pytest.raises(ConfigError, match=r"tpot_reserve: got 1.0; accepted: a share from 0 to 0.9"):
        load_config(SchedulerConfig, env={"SAGELLM_SCHED_TPOT_RESERVE": "1"})


@pytest.mark.parametrize("scheduler, loops, expected", [
    ("fifo", 0, None), ("priority", 0, None), ("slo_aware", 0, None), ("slo_aware", 2, 2), ("fifo", 8, 8),
])
def test_decode_loops_come_from_the_strategy_unless_set(scheduler, loops, expected):
    assert SchedulerConfig(scheduler=scheduler, sched_decode_loops=loops).decode_loops() == expected


def test_negative_decode_loops_are_rejected():
    with pytest.raises(ConfigError, match=r"sched_decode_loops"):
        load_config(SchedulerConfig, env={"SAGELLM_SCHED_DECODE_LOOPS": "-1"})
