"""Kunlunxin XPUs. Detected for the listing; never usable: LMDeploy 0.11 has no kunlun backend.

Probed, in order: the torch plugins ``torch_xmlir`` (Kunlunxin XPyTorch / XMLIR) and
``torch_klx``, whose ``xpu`` namespace (or module-level functions) lists devices; then a
Kunlunxin torch build that speaks the CUDA API (what vLLM-Kunlun runs on), recognised by the
driver node ``/dev/xpuctrl`` next to a working ``torch.cuda``. Stock torch's ``torch.xpu`` is
Intel's and is never consulted.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sagellm.hal import _probe
from sagellm.hal.platforms.base import Platform
from sagellm.hal.types import KV_QUANT_NONE, CapabilityValue, PlatformInfo

PLUGIN_MODULES = ("torch_xmlir", "torch_klx")
NO_BACKEND = "LMDeploy 0.11 has no kunlun backend (its device_type is one of cuda, ascend, maca, camb)"


class KunlunPlatform(Platform):
    name: ClassVar[str] = "kunlun"
    lmdeploy_device_type: ClassVar[str | None] = None
    dlinfer_vendor: ClassVar[str | None] = None
    kv_quant_policies: ClassVar[tuple[int, ...]] = (KV_QUANT_NONE,)
    collective_backend: ClassVar[str | None] = "bkcl"
    # Depends on the Kunlunxin torch build; not needed while LMDeploy cannot run here.
    dist_backend: ClassVar[str | None] = None
    default_dtypes: ClassVar[tuple[str, ...]] = ("float16", "bfloat16", "float32")
    vendor_modules: ClassVar[tuple[str, ...]] = PLUGIN_MODULES

    @classmethod
    def absent_reason(cls) -> str:
        return f"none of {', '.join(PLUGIN_MODULES)} is installed and {_probe.KUNLUN_CTRL_NODE} is absent"

    @classmethod
    def detect(cls) -> PlatformInfo | None:
        for name in PLUGIN_MODULES:
            result = _probe.import_installed(name)
            if not result.installed:
                continue
            if result.module is None:
                reason = f"{_probe.describe_import_failure(name, str(result.error))}; also {NO_BACKEND}"
                return PlatformInfo(device_count=0, usable=False, reason=reason)
            return _from_namespace(_plugin_namespace(result.module), {"plugin": name})
        marker = _probe.kunlun_marker()
        if marker is None:
            return None
        torch = _probe.torch_module()
        if torch is None or not torch.cuda.is_available():
            reason = f"Kunlunxin driver found ({marker}) but no Kunlunxin torch plugin; also {NO_BACKEND}"
            return PlatformInfo(device_count=0, usable=False, reason=reason)
        return _from_namespace(torch.cuda, {"plugin": "torch (CUDA-API build)", "driver": marker})


def _plugin_namespace(module: Any) -> Any:
    return getattr(module, "xpu", None) or module


def _from_namespace(namespace: Any, capabilities: dict[str, CapabilityValue]) -> PlatformInfo:
    try:
        count = int(namespace.device_count())
        table = _probe.read_devices(namespace, count)
    except Exception as exc:  # noqa: BLE001 - unknown plugin API: report, don't crash
        return PlatformInfo(
            device_count=0,
            capabilities=capabilities,
            usable=False,
            reason=f"could not list Kunlunxin devices ({type(exc).__name__}: {exc}); also {NO_BACKEND}",
        )
    return PlatformInfo(
        device_count=count,
        device_names=table.names,
        device_memory_bytes=table.memory_bytes,
        capabilities=capabilities,
        usable=False,
        reason=NO_BACKEND,
    )
