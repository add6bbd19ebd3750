from __future__ import annotations

import os
from pathlib import Path

import pytest

from sagellm.hal.platforms import cpu
from sagellm.hal.platforms.cpu import CpuPlatform

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_int8 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_int8 amx_tile
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics sve bf16
CPU implementer\t: 0x41
"""


def test_parse_meminfo_total() -> None:
    text = "MemTotal:       24684096 kB\nMemFree:         1000 kB\n"
    assert cpu.parse_meminfo_total(text) == 24684096 * 1024
    assert cpu.parse_meminfo_total("MemFree: 1 kB\n") is None


def test_parse_cpuinfo_x86_and_arm() -> None:
    model, flags = cpu.parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx512_bf16", "amx_bf16"} <= flags
    model, flags = cpu.parse_cpuinfo(ARM_CPUINFO)
    assert model is None
    assert {"asimd", "sve", "bf16"} <= flags


@pytest.fixture
def fake_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    proc, sys_root = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:       16384000 kB\n")
    (proc / "cpuinfo").write_text(X86_CPUINFO)
    (sys_root / "fs" / "cgroup").mkdir(parents=True)
    (sys_root / "fs" / "cgroup" / "memory.max").write_text("8589934592\n")
    for node in ("node0", "node1", "has_cpu"):
        (sys_root / "devices" / "system" / "node" / node).mkdir(parents=True)
    monkeypatch.setattr(cpu, "PROC_ROOT", proc)
    monkeypatch.setattr(cpu, "SYS_ROOT", sys_root)
    monkeypatch.setattr(cpu, "usable_cores", lambda: 56)
    monkeypatch.setattr(os, "cpu_count", lambda: 112)
    monkeypatch.setattr(cpu._platform, "machine", lambda: "x86_64")
    return tmp_path


def test_cpu_descriptor_exact(fake_host: Path) -> None:
    d = CpuPlatform.describe()
    assert d.to_dict() == {
        "platform": "cpu",
        "lmdeploy_device_type": "cpu",
        "dlinfer_vendor": None,
        "device_count": 1,
        "device_memory_bytes": [16384000 * 1024],
        "device_names": ["Intel(R) Xeon(R) Platinum 8480+"],
        "dtypes": ["float32", "bfloat16", "float16"],
        "kv_quant_policies": [0, 4, 8],
        "collective_backend": "gloo",
        "dist_backend": "gloo",
        "interconnect": None,
        "required_block_size": None,
        "capabilities": {
            "arch": "x86_64",
            "cores": 56,
            "logical_cpus": 112,
            "numa_nodes": 2,
            "bf16_fast": True,
            "isa": "avx2,avx512f,avx512_bf16,amx_bf16,amx_int8",
            "cgroup_memory_limit_bytes": 8589934592,
        },
        "usable": True,
        "reason": None,
    }


def test_cpu_without_bf16_flags_and_without_procfs(fake_host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (fake_host / "proc" / "meminfo").unlink()
    (fake_host / "proc" / "cpuinfo").write_text("model name\t: Old CPU\nflags\t\t: sse2 avx2\n")
    (fake_host / "sys" / "fs" / "cgroup" / "memory.max").write_text("max\n")
    sysconf = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}
    monkeypatch.setattr(os, "sysconf", lambda name: sysconf[name])
    d = CpuPlatform.describe()
    assert d.device_memory_bytes == (4096 * 1000,)
    assert d.device_names == ("Old CPU",)
    assert d.capabilities["bf16_fast"] is False
    assert d.capabilities["isa"] == "avx2"
    assert "cgroup_memory_limit_bytes" not in d.capabilities
    assert d.usable


def test_cpu_on_this_host_is_usable() -> None:
    d = CpuPlatform.describe()
    assert d.usable and d.device_count == 1 and d.device_memory_bytes[0] > 0
    assert d.capabilities["cores"] >= 1
