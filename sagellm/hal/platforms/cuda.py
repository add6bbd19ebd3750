"""CUDA-API devices LMDeploy 0.11 runs with ``device_type="cuda"``: NVIDIA GPUs, and ROCm/DTK
builds of torch (AMD GPUs, Hygon DCU) whose ``torch.cuda`` is HIP underneath.

LMDeploy 0.11's cuda backend is Triton kernels, and its flash-attention kernel has a HIP
branch (``torch.version.hip``); nothing in LMDeploy routes a HIP build anywhere else, so
Hygon DCU is this platform with runtime ``hip``. MetaX (MACA) and Kunlunxin builds also answer
``torch.cuda.is_available()``: on such hosts this platform reports the devices as not usable
and names the platform to select instead.

Device facts come from NVML when ``pynvml`` is installed (no CUDA context, fork-safe),
otherwise from ``torch.cuda`` (which initialises CUDA in this process).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from types import ModuleType
from typing import Any, ClassVar

from sagellm.hal import _probe
from sagellm.hal.platforms.base import Platform
from sagellm.hal.types import KV_QUANT_INT4, KV_QUANT_INT8, KV_QUANT_NONE, CapabilityValue, PlatformInfo

NVIDIA_SMI_TIMEOUT_S = 5.0


def _runtime(torch: ModuleType) -> tuple[str, str] | None:
    """("cuda" | "hip", version) of this torch build, None for a CPU-only build."""
    hip = getattr(torch.version, "hip", None)
    if hip:
        return "hip", str(hip)
    cuda = getattr(torch.version, "cuda", None)
    if cuda:
        return "cuda", str(cuda)
    return None


def _foreign_vendor() -> tuple[str, str] | None:
    """(platform to select, evidence) when the CUDA-API devices belong to another vendor."""
    marker = _probe.maca_marker()
    if marker is not None:
        return "maca", f"MetaX MACA toolkit ({marker})"
    marker = _probe.kunlun_marker()
    if marker is not None:
        return "kunlun", f"Kunlunxin XPU driver ({marker})"
    return None


class CudaPlatform(Platform):
    name: ClassVar[str] = "cuda"
    lmdeploy_device_type: ClassVar[str | None] = "cuda"
    dlinfer_vendor: ClassVar[str | None] = None
    kv_quant_policies: ClassVar[tuple[int, ...]] = (KV_QUANT_NONE, KV_QUANT_INT4, KV_QUANT_INT8)
    collective_backend: ClassVar[str | None] = "nccl"
    dist_backend: ClassVar[str | None] = "nccl"
    vendor_modules: ClassVar[tuple[str, ...]] = ("torch",)

    @classmethod
    def absent_reason(cls) -> str:
        torch = _probe.torch_module()
        if torch is None:
            return "torch is not installed"
        if _runtime(torch) is None:
            return f"torch {torch.__version__} is built without CUDA or HIP"
        return f"no CUDA/HIP device visible ({_probe.visible_devices_note('CUDA_VISIBLE_DEVICES')})"

    @classmethod
    def detect(cls) -> PlatformInfo | None:
        torch = _probe.torch_module()
        if torch is None:
            return None
        runtime = _runtime(torch)
        if runtime is None or not torch.cuda.is_available():
            return None
        kind, version = runtime
        count = int(torch.cuda.device_count())
        if count == 0:
            return None
        nvml = _probe.import_installed("pynvml").module if kind == "cuda" else None
        facts = _nvml_facts(nvml, count) if nvml is not None else None
        probe = "nvml" if facts is not None else "torch"
        if facts is None:
            facts = _torch_facts(torch, count)
        names, memory, capability = facts
        capabilities: dict[str, CapabilityValue] = {
            "runtime": f"{kind} {version}",
            "compute_capability": ",".join(f"{major}.{minor}" for major, minor in capability),
            "probe": probe,
        }
        # LMDeploy 0.11 is_bf16_supported: CUDA >= 11 and sm >= 8.0; 'rocm' -> True.
        bf16 = kind == "hip" or all(major >= 8 for major, _ in capability)
        dtypes = ("float16", "bfloat16", "float32") if bf16 else ("float16", "float32")
        interconnect, peer = _interconnect(torch, kind, count, nvml)
        if peer is not None:
            capabilities["p2p"] = peer
        foreign = _foreign_vendor()
        usable = foreign is None
        reason = None
        if foreign is not None:
            platform, evidence = foreign
            reason = f"CUDA-API devices here belong to {evidence}: select platform {platform!r}"
        return PlatformInfo(
            device_count=count,
            device_names=names,
            device_memory_bytes=memory,
            dtypes=dtypes,
            interconnect=interconnect,
            capabilities=capabilities,
            usable=usable,
            reason=reason,
        )


Facts = tuple[tuple[str, ...], tuple[int, ...], tuple[tuple[int, int], ...]]


def _torch_facts(torch: ModuleType, count: int) -> Facts:
    props = [torch.cuda.get_device_properties(i) for i in range(count)]
    return (
        tuple(str(p.name) for p in props),
        tuple(int(p.total_memory) for p in props),
        tuple((int(p.major), int(p.minor)) for p in props),
    )


def _nvml_facts(nvml: Any, count: int) -> Facts | None:
    """Device facts through NVML, in ``CUDA_VISIBLE_DEVICES`` order; None if NVML disagrees."""
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVML missing its driver library: fall back to torch
        return None
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in _nvml_indices(count)]
        names = tuple(_text(nvml.nvmlDeviceGetName(h)) for h in handles)
        memory = tuple(int(nvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles)
        capability = tuple(tuple(int(v) for v in nvml.nvmlDeviceGetCudaComputeCapability(h)) for h in handles)
        return names, memory, capability  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - e.g. UUIDs in CUDA_VISIBLE_DEVICES: torch knows better
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _nvml_indices(count: int) -> list[int]:
    """Physical indices of the visible devices (NVML ignores ``CUDA_VISIBLE_DEVICES``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    indices = [int(item) for item in visible.split(",")[:count]]  # ValueError for UUIDs -> torch path
    return indices


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _interconnect(torch: ModuleType, kind: str, count: int, nvml: Any) -> tuple[str | None, bool | None]:
    """Best effort (link, peer access between devices 0 and 1): link is "nvlink" or "pcie",
    None for a single device; peer is None when not probed."""
    if count < 2:
        return None, None
    try:
        peer: bool | None = bool(torch.cuda.can_device_access_peer(0, 1))
    except Exception:  # noqa: BLE001
        peer = None
    if kind == "cuda" and _nvlink_present(nvml):
        return "nvlink", peer
    return "pcie", peer


def _nvlink_present(nvml: Any) -> bool:
    if nvml is not None:
        try:
            nvml.nvmlInit()
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(_nvml_indices(2)[0])
                return bool(nvml.nvmlDeviceGetNvLinkState(handle, 0))
            finally:
                nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - no NVLink on this board raises NVMLError_NotSupported
            return False
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run(
            [smi, "topo", "-m"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(r"\bNV\d+\b", out) is not None
