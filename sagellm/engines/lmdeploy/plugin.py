"""Install sagellm's plugins into the patched LMDeploy.

Patch 0001 calls every ``lmdeploy.plugins`` entry point once per process (the engine process
and each worker it spawns); ours points at :func:`install`. ``SAGELLM_PLUGINS`` selects which
plugins install: unset or ``all`` for every one, ``none`` for none (stock LMDeploy behaviour),
or a comma-separated list of names from :data:`PLUGINS`.
"""

from __future__ import annotations

import os
from typing import Callable

from sagellm.core.registry import Registry

# plugin name -> the function that installs it; imported only when selected.
PLUGINS: Registry[Callable[[], None]] = Registry("sagellm plugin")
PLUGINS.register("cpu", "sagellm.engines.lmdeploy.cpu.device:register_cpu_device")
PLUGINS.register("api_guard", "sagellm.engines.lmdeploy.app_hooks:register_api_guard")
PLUGINS.register("kv_tiers", "sagellm.engines.lmdeploy.kv_tiers:install_kv_tiers")
PLUGINS.register("pd", "sagellm.engines.lmdeploy.pd:install_pd")
PLUGINS.register("auth", "sagellm.engines.lmdeploy.auth:register_auth")
PLUGINS.register("metrics", "sagellm.engines.lmdeploy.metrics_hook:register_metrics")
PLUGINS.register("mp_handshake", "sagellm.engines.lmdeploy.mp_handshake:register_mp_handshake")
PLUGINS.register("spec_decode", "sagellm.engines.lmdeploy.spec_decode:install_spec_decode")
PLUGINS.register("scheduler", "sagellm.engines.lmdeploy.scheduling:install_scheduler")
PLUGINS.register("slowdown", "sagellm.engines.lmdeploy.slowdown:register_slowdown")
PLUGINS.register("session_end", "sagellm.engines.lmdeploy.session_end:install_session_end")
PLUGINS.register("text_tail", "sagellm.engines.lmdeploy.text_tail:install_text_tail")
PLUGINS.register("trie_leaves", "sagellm.engines.lmdeploy.trie_leaves:install_trie_leaves")
PLUGINS.register("trie_lru", "sagellm.engines.lmdeploy.trie_lru:install_trie_lru")
PLUGINS.register("logits_rows", "sagellm.engines.lmdeploy.logits_rows:install_logits_rows")

_installed: set[str] = set()


def selected_plugins(value: str | None = None) -> list[str]:
    """Plugin names selected by ``SAGELLM_PLUGINS`` (or ``value``), sorted."""
    if value is None:
        value = os.environ.get("SAGELLM_PLUGINS", "all")
    value = value.strip()
    if value in ("", "all"):
        return list(PLUGINS.names())
    if value == "none":
        return []
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PLUGINS]
    if unknown:
        raise ValueError(
            f"SAGELLM_PLUGINS names unknown plugin(s) {', '.join(unknown)}; "
            f"valid names: {', '.join(PLUGINS.names())} (or 'all' / 'none')"
        )
    return [name for name in PLUGINS.names() if name in names]


def install() -> list[str]:
    """Install the selected plugins once per process; returns the names installed so far."""
    for name in selected_plugins():
        if name in _installed:
            continue
        PLUGINS.get(name)()
        _installed.add(name)
    return sorted(_installed)


def installed_plugins() -> list[str]:
    return sorted(_installed)
