"""Detection shared by platforms whose devices come from a torch plugin module
(``torch_npu`` -> ``npu``, ``torch_mlu`` -> ``mlu``) and run under LMDeploy through dlinfer."""

from __future__ import annotations

from dataclasses import dataclass

from sagellm.hal import _probe
from sagellm.hal.types import CapabilityValue, PlatformInfo


@dataclass(frozen=True)
class VendorProbe:
    """How to find one vendor's devices.

    Attributes:
        module: the torch plugin to import (only if installed).
        namespace: its ``torch.cuda``-like namespace, looked up on the module, then on torch.
        visible_env: the env var that hides devices, quoted when none are visible.
        device_word: what the vendor calls a device, for messages.
        dlinfer_vendor: the dlinfer build LMDeploy needs, None if LMDeploy needs none.
    """

    module: str
    namespace: str
    visible_env: str
    device_word: str
    dlinfer_vendor: str | None


def detect_vendor_devices(probe: VendorProbe) -> PlatformInfo | None:
    """None when ``probe.module`` is not installed; otherwise what it reports, usable or not."""
    result = _probe.import_installed(probe.module)
    if not result.installed:
        return None
    if result.module is None:
        return PlatformInfo(
            device_count=0, usable=False, reason=_probe.describe_import_failure(probe.module, str(result.error))
        )
    module = result.module
    capabilities: dict[str, CapabilityValue] = {}
    version = getattr(module, "__version__", None)
    if version is not None:
        capabilities[f"{probe.module}_version"] = str(version)
    namespace = getattr(module, probe.namespace, None)
    if namespace is None:
        torch = _probe.torch_module()
        namespace = getattr(torch, probe.namespace, None) if torch is not None else None
    if namespace is None:
        reason = f"{probe.module} imported but exposes no '{probe.namespace}' device API"
        return PlatformInfo(device_count=0, capabilities=capabilities, usable=False, reason=reason)
    try:
        count = int(namespace.device_count())
        table = _probe.read_devices(namespace, count)
    except Exception as exc:  # noqa: BLE001 - a driver/runtime mismatch surfaces here
        reason = f"{probe.module} failed to query devices ({type(exc).__name__}: {exc})"
        return PlatformInfo(device_count=0, capabilities=capabilities, usable=False, reason=reason)
    if count == 0:
        reason = f"{probe.module} sees no {probe.device_word} ({_probe.visible_devices_note(probe.visible_env)})"
        return PlatformInfo(device_count=0, capabilities=capabilities, usable=False, reason=reason)
    problem = _probe.dlinfer_problem(probe.dlinfer_vendor) if probe.dlinfer_vendor is not None else None
    return PlatformInfo(
        device_count=count,
        device_names=table.names,
        device_memory_bytes=table.memory_bytes,
        capabilities=capabilities,
        usable=problem is None,
        reason=problem,
    )
