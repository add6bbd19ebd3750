"""The CPU platform: always present; sagellm's own LMDeploy device type (added by patch 0001)."""

from __future__ import annotations

import os
import platform as _platform
from pathlib import Path
from typing import ClassVar

from sagellm.hal.platforms.base import Platform
from sagellm.hal.types import KV_QUANT_INT4, KV_QUANT_INT8, KV_QUANT_NONE, CapabilityValue, PlatformInfo

#: Root of procfs and sysfs; tests point these at a fake tree.
PROC_ROOT = Path("/proc")
SYS_ROOT = Path("/sys")

#: CPU flags that make bfloat16 matmuls fast (x86: AVX512-BF16 / AMX; Arm: the BF16 extension).
BF16_FAST_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: Flags worth showing in capabilities (what the CPU kernels can dispatch on).
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


def parse_meminfo_total(text: str) -> int | None:
    """``MemTotal`` from /proc/meminfo text, in bytes."""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemTotal":
            fields = rest.split()
            if not fields:
                return None
            scale = 1024 if len(fields) > 1 and fields[1].lower() == "kb" else 1
            return int(fields[0]) * scale
    return None


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo text; x86 ``flags`` or Arm ``Features``."""
    model: str | None = None
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if model is None and key in ("model name", "Model", "Processor"):
            model = value.strip() or None
        elif not flags and key in ("flags", "Features"):
            flags = frozenset(value.split())
    return model, flags


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def total_memory_bytes() -> int:
    """Total RAM: /proc/meminfo, else ``os.sysconf``."""
    text = _read(PROC_ROOT / "meminfo")
    total = parse_meminfo_total(text) if text is not None else None
    if total is not None:
        return total
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


def usable_cores() -> int:
    """CPUs this process may run on (affinity mask), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cgroup_memory_limit() -> int | None:
    """The cgroup v2 memory limit of this process's container, None when unlimited or unknown."""
    text = _read(SYS_ROOT / "fs" / "cgroup" / "memory.max")
    if text is None or not text.strip().isdigit():
        return None
    return int(text.strip())


def numa_nodes() -> int:
    node_dir = SYS_ROOT / "devices" / "system" / "node"
    try:
        return sum(1 for p in node_dir.iterdir() if p.name.startswith("node") and p.name[4:].isdigit()) or 1
    except OSError:
        return 1


class CpuPlatform(Platform):
    name: ClassVar[str] = "cpu"
    lmdeploy_device_type: ClassVar[str | None] = "cpu"
    dlinfer_vendor: ClassVar[str | None] = None
    # int4/int8 KV through sagellm.accel.kernels.cpu.kv_quant (LMDeploy's quant_policy 4/8 layout); policy 8
    # also carries fp8 KV (float8 storage chosen by engines.lmdeploy.cpu.device.set_kv_quant_storage).
    kv_quant_policies: ClassVar[tuple[int, ...]] = (KV_QUANT_NONE, KV_QUANT_INT4, KV_QUANT_INT8)
    collective_backend: ClassVar[str | None] = "gloo"
    dist_backend: ClassVar[str | None] = "gloo"
    default_dtypes: ClassVar[tuple[str, ...]] = ("float32", "bfloat16", "float16")

    @classmethod
    def detect(cls) -> PlatformInfo:
        cpuinfo = _read(PROC_ROOT / "cpuinfo") or ""
        model, flags = parse_cpuinfo(cpuinfo)
        arch = _platform.machine() or "unknown"
        capabilities: dict[str, CapabilityValue] = {
            "arch": arch,
            "cores": usable_cores(),
            "logical_cpus": os.cpu_count() or 1,
            "numa_nodes": numa_nodes(),
            "bf16_fast": any(flag in flags for flag in BF16_FAST_FLAGS),
            "isa": ",".join(flag for flag in REPORTED_FLAGS if flag in flags),
        }
        limit = cgroup_memory_limit()
        if limit is not None:
            capabilities["cgroup_memory_limit_bytes"] = limit
        return PlatformInfo(
            device_count=1,
            device_names=(model or _platform.processor() or arch,),
            device_memory_bytes=(total_memory_bytes(),),
            capabilities=capabilities,
        )
