"""Fixtures shared by the engine integration tests."""

from __future__ import annotations

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
