"""Fixtures shared by the engine integration tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sagellm.kv_runtime.config import KVTierConfig


@pytest.fixture
def install_tiers():
    """Install a TieredPrefixCache with a given config for the engines built in the test, then restore."""
    from lmdeploy.pytorch.paging.hooks import get_kv_hooks, set_kv_hooks

    from sagellm.engines.lmdeploy.kv_tiers import TieredPrefixCache

    previous = get_kv_hooks()
    installed = []

    def install(config: KVTierConfig) -> TieredPrefixCache:
        hooks = TieredPrefixCache(config)
        set_kv_hooks(hooks)
        installed.append(hooks)
        return hooks

    yield install
    for hooks in installed:
        hooks.close()
    set_kv_hooks(previous)


@pytest.fixture
def block_clock(monkeypatch):
    """LMDeploy's block manager clock (it stamps block access times with ``time.perf_counter``), set by the test."""
    from lmdeploy.pytorch.paging.block_manager import base_block_manager

    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(base_block_manager, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    return clock


@pytest.fixture
def stock_hooks():
    """LMDeploy's own scheduling and KV hooks (no sagellm plugin) for the test, then the previous ones."""
    from lmdeploy.pytorch.paging.hooks import get_kv_hooks, set_kv_hooks
    from lmdeploy.pytorch.sched_hooks import SchedulerHooks, get_sched_hooks, set_sched_hooks

    previous, previous_kv = get_sched_hooks(), get_kv_hooks()
    set_sched_hooks(SchedulerHooks())
    set_kv_hooks(None)
    yield
    set_sched_hooks(previous)
    set_kv_hooks(previous_kv)
