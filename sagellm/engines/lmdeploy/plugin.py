"""Install sagellm's plugins into the patched LMDeploy.

Patch 0001 calls every ``lmdeploy.plugins`` entry point once per process (the engine process
and each worker it spawns); ours points at :func:`install`. ``SAGELLM_PLUGINS`` selects which
plugins install: unset or ``all`` for every one, ``none`` for none (stock LMDeploy behaviour),
or a comma-separated list of names from :data:`PLUGINS`.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

# plugin name -> "module:function" that installs it; imported only when selected.
PLUGINS: dict[str, str] = {
    "cpu": "sagellm.engines.lmdeploy.cpu.device:register_cpu_device",
    "api_guard": "sagellm.engines.lmdeploy.app_hooks:register_api_guard",
}

_installed: set[str] = set()


def selected_plugins(value: str | None = None) -> list[str]:
    """Plugin names selected by ``SAGELLM_PLUGINS`` (or ``value``), in registry order."""
    if value is None:
        value = os.environ.get("SAGELLM_PLUGINS", "all")
    value = value.strip()
    if value in ("", "all"):
        return list(PLUGINS)
    if value == "none":
        return []
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PLUGINS]
    if unknown:
        raise ValueError(
            f"SAGELLM_PLUGINS names unknown plugin(s) {', '.join(unknown)}; "
            f"valid names: {', '.join(sorted(PLUGINS))} (or 'all' / 'none')"
        )
    return [name for name in PLUGINS if name in names]


def _load(target: str) -> Callable[[], None]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def install() -> list[str]:
    """Install the selected plugins once per process; returns the names installed so far."""
    for name in selected_plugins():
        if name in _installed:
            continue
        _load(PLUGINS[name])()
        _installed.add(name)
    return sorted(_installed)


def installed_plugins() -> list[str]:
    return sorted(_installed)
