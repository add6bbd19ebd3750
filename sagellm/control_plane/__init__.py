"""Control plane: engines behind one gateway, health, routing, ports. See README.md.

Importing the package imports only the client and the manager's types lazily; the gateway
(FastAPI) is imported from ``sagellm.control_plane.gateway`` when served.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ControlPlaneManager", "HealthPolicy", "UnifiedInferenceClient"]


def __getattr__(name: str) -> Any:
    if name == "UnifiedInferenceClient":
        from sagellm.control_plane.client import UnifiedInferenceClient

        return UnifiedInferenceClient
    if name in ("ControlPlaneManager", "HealthPolicy"):
        from sagellm.control_plane import manager

        return getattr(manager, name)
    raise AttributeError(f"module 'sagellm.control_plane' has no attribute {name!r}")
