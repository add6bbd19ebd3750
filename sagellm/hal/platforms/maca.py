"""MetaX GPUs (MACA): MetaX's torch build speaks the CUDA API (``torch.cuda``, device ``"cuda"``);
LMDeploy 0.11 runs them with ``device_type="maca"`` through the dlinfer maca build.

Presence is recognised by the MACA toolkit (``MACA_PATH`` or ``/opt/maca``), since a MetaX torch
build is otherwise indistinguishable from a CUDA one. Hygon DCU is not this platform: its
ROCm/DTK torch is HIP, which LMDeploy 0.11 runs as ``cuda`` (see ``cuda.py``).
"""

from __future__ import annotations

from typing import ClassVar

from sagellm.hal import _probe
from sagellm.hal.platforms.base import Platform
from sagellm.hal.types import KV_QUANT_NONE, CapabilityValue, PlatformInfo


class MacaPlatform(Platform):
    name: ClassVar[str] = "maca"
    lmdeploy_device_type: ClassVar[str | None] = "maca"
    dlinfer_vendor: ClassVar[str | None] = "maca"
    kv_quant_policies: ClassVar[tuple[int, ...]] = (KV_QUANT_NONE,)
    # MCCL, reached through torch.distributed's "nccl" name in MetaX's torch build.
    collective_backend: ClassVar[str | None] = "mccl"
    dist_backend: ClassVar[str | None] = "nccl"
    # LMDeploy 0.11 is_bf16_supported('maca') is True.
    default_dtypes: ClassVar[tuple[str, ...]] = ("float16", "bfloat16", "float32")
    vendor_modules: ClassVar[tuple[str, ...]] = ("torch (MetaX MACA build)",)

    @classmethod
    def absent_reason(cls) -> str:
        return f"no MetaX MACA toolkit found (MACA_PATH unset, {_probe.MACA_DEFAULT_PATH} absent)"

    @classmethod
    def detect(cls) -> PlatformInfo | None:
        marker = _probe.maca_marker()
        if marker is None:
            return None
        capabilities: dict[str, CapabilityValue] = {"maca": marker}
        torch = _probe.torch_module()
        if torch is None or not torch.cuda.is_available():
            reason = f"MACA toolkit found ({marker}) but torch sees no CUDA-API device; install MetaX's torch build"
            return PlatformInfo(device_count=0, capabilities=capabilities, usable=False, reason=reason)
        try:
            count = int(torch.cuda.device_count())
            table = _probe.read_devices(torch.cuda, count)
        except Exception as exc:  # noqa: BLE001
            reason = f"torch failed to query MetaX devices ({type(exc).__name__}: {exc})"
            return PlatformInfo(device_count=0, capabilities=capabilities, usable=False, reason=reason)
        if count == 0:
            reason = f"torch sees no MetaX GPU ({_probe.visible_devices_note('CUDA_VISIBLE_DEVICES')})"
            return PlatformInfo(device_count=0, capabilities=capabilities, usable=False, reason=reason)
        problem = _probe.dlinfer_problem("maca")
        return PlatformInfo(
            device_count=count,
            device_names=table.names,
            device_memory_bytes=table.memory_bytes,
            capabilities=capabilities,
            usable=problem is None,
            reason=problem,
        )
