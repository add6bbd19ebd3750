"""Topology probe: matrix parsing, NUMA from sysfs, the preset rules, and a real probe of this host."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagellm.comm_backend.topology import (
    DeviceEntry,
    HardwareProfile,
    LinkEntry,
    MemcpyResult,
    classify_link,
    measure_memcpy,
    parse_cpulist_count,
    parse_topology_matrix,
    probe,
    probe_numa,
    probe_tools,
    recommend_preset,
)
from sagellm.comm_backend.transport_config import load_presets

EXAMPLE = Path(__file__).resolve().parents[3] / "configs" / "examples" / "transport_probe_cpu.json"

NVIDIA = """\
\tGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\tNUMA Affinity
GPU0\t X \tNV18\tPIX\tPXB\t0-47\t0
GPU1\tNV18\t X \tSYS\tPXB\t0-47\t0
GPU2\tPIX\tSYS\t X \tSYS\t48-95\t1
NIC0\tPXB\tPXB\tSYS\t X

Legend:
  X    = Self
"""

ASCEND = """\
           NPU0       NPU1       CPU Affinity
NPU0       X          HCCS       0-23
NPU1       HCCS       X          0-23
"""

ROCM = """\
============================ Link Type between two GPUs ============================
       GPU0         GPU1
GPU0   0            XGMI
GPU1   XGMI         0
"""


def kinds(links):
    return [(link.kind, link.endpoints, link.detail) for link in links]


def test_parse_matrices():
    assert kinds(parse_topology_matrix(NVIDIA, "nvidia-smi")) == [
        ("nvlink", ("GPU0", "GPU1"), "NV18"),
        ("pcie", ("GPU0", "GPU2"), "PIX"),
        ("pcie", ("GPU1", "GPU2"), "SYS"),
    ]
    assert kinds(parse_topology_matrix(ASCEND, "npu-smi")) == [("hccs", ("NPU0", "NPU1"), "HCCS")]
    assert kinds(parse_topology_matrix(ROCM, "rocm-smi")) == [("xgmi", ("GPU0", "GPU1"), "XGMI")]
    assert parse_topology_matrix("No devices were found\n", "nvidia-smi") == ()


@pytest.mark.parametrize(
    "cell, kind",
    [("NV4", "nvlink"), ("HCCS", "hccs"), ("xGMI", "xgmi"), ("MLU-Link", "mlu_link"), ("PHB", "pcie"), ("X", None), ("??", "unknown")],
)
def test_classify(cell, kind):
    assert classify_link(cell) == kind


def test_numa_from_a_fake_sysfs(tmp_path):
    for node, cpus, kb, dist in ((0, "0-3", 1024, "10 21"), (1, "4-7", 2048, "21 10")):
        d = tmp_path / f"node{node}"
        d.mkdir()
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal:       {kb} kB\nNode {node} MemFree: 1 kB\n")
        (d / "distance").write_text(dist + "\n")
    nodes, links = probe_numa(tmp_path)
    assert [(n.node_id, n.cpus, n.memory_bytes, n.distances) for n in nodes] == [
        (0, "0-3", 1024 * 1024, (10, 21)), (1, "4-7", 2048 * 1024, (21, 10))
    ]
    assert kinds(links) == [("numa", ("node0", "node1"), "distance 21")]
    assert probe_numa(tmp_path / "absent") == ((), ())
    assert parse_cpulist_count("0-3,8-11,16") == 9


def test_tools_run_only_when_present(tmp_path):
    tool = tmp_path / "fake-smi"
    tool.write_text("#!/bin/sh\ncat <<'EOF'\n" + ASCEND + "EOF\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'driver not loaded' >&2\nexit 9\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    links, runs = probe_tools(
        [("fake-smi", (str(tool),)), ("broken-smi", (str(broken),)), ("absent-smi", ("absent-smi-xyz",))]
    )
    assert kinds(links) == [("hccs", ("NPU0", "NPU1"), "HCCS")]
    assert [(r.name, r.found, r.ok) for r in runs] == [
        ("fake-smi", True, True), ("broken-smi", True, False), ("absent-smi", False, False)
    ]
    assert runs[1].note == "exit 9: driver not loaded"


def cpu(usable=True):
    return DeviceEntry(platform="cpu", index=0, name="cpu", memory_bytes=1 << 30, usable=usable)


def gpu(i):
    return DeviceEntry(platform="cuda", index=i, name="H100", memory_bytes=80 << 30, usable=True)


def memcpy(gbps):
    return MemcpyResult(method="torch", buffer_bytes=1 << 20, repetitions=3, best_gbps=gbps, median_gbps=gbps, elapsed_s=0.01)


def test_recommendation_rules_name_real_presets():
    nvlink = LinkEntry(kind="nvlink", endpoints=("GPU0", "GPU1"), detail="NV18", source="t")
    pcie = LinkEntry(kind="pcie", endpoints=("GPU0", "GPU1"), detail="PIX", source="t")
    cases = [
        (([cpu(), gpu(0), gpu(1)], [nvlink], memcpy(20)), "high-bw", "joined by nvlink"),
        (([cpu(), gpu(0), gpu(1)], [pcie], memcpy(20)), "low-latency", "PCIe"),
        (([cpu(), gpu(0)], [], None), "low-latency", "a single device"),
        (([cpu()], [], memcpy(12.0)), "low-latency", "12.0 GB/s >= 4 GB/s"),
        (([cpu()], [], memcpy(1.5)), "low-cost", "1.5 GB/s < 4 GB/s"),
        (([cpu()], [], None), "low-latency", "not measured"),
    ]
    valid = set(load_presets().names())
    for args, preset, reason in cases:
        got, why = recommend_preset(*args)
        assert (got, reason in why) == (preset, True), (args, why)
        assert got in valid


def test_memcpy_is_bounded():
    result = measure_memcpy(buffer_bytes=1 << 20, repetitions=3, time_budget_s=5)
    assert result.repetitions == 3 and result.best_gbps >= result.median_gbps > 0
    with pytest.raises(ValueError):
        measure_memcpy(buffer_bytes=0)


def test_probe_returns_a_valid_profile():
    profile = probe(buffer_bytes=4 << 20, repetitions=2)
    assert isinstance(profile, HardwareProfile)
    assert any(d.platform == "cpu" for d in profile.devices)
    assert profile.recommended_preset in load_presets().names() and profile.reason
    assert profile.memcpy is not None and profile.memcpy.best_gbps > 0
    if Path("/sys/devices/system/node/node0").is_dir():
        assert profile.numa_nodes and profile.numa_nodes[0].node_id == 0
    assert HardwareProfile.from_json(profile.to_json()) == profile
    assert "recommended preset:" in profile.summary()


def test_committed_example_is_a_valid_profile():
    profile = HardwareProfile.from_json(EXAMPLE.read_text())
    assert profile.platform == "cpu" and profile.recommended_preset in load_presets().names()
    assert profile.memcpy is not None


def test_profile_rejects_nonsense():
    with pytest.raises(ValueError, match="HardwareProfile.devices"):
        HardwareProfile(
            hostname="h", probed_at=1.0, machine="x", platform="cpu", devices=(), links=(), numa_nodes=(),
            memcpy=None, tools=(), recommended_preset="low-cost", reason="r",
        )
    with pytest.raises(ValueError, match="LinkEntry.kind: got 'wifi'"):
        LinkEntry(kind="wifi", endpoints=("a", "b"), detail="", source="t")


def test_cli_probe_json_and_presets(tmp_path):
    from sagellm.cli.main import app

    out = tmp_path / "probe.json"
    result = CliRunner().invoke(app, ["transport", "probe", "--json", "--buffer-mib", "2", "--repetitions", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert HardwareProfile.from_json(result.output) == HardwareProfile.from_json(out.read_text())
    result = CliRunner().invoke(app, ["transport", "presets", "--json"])
    assert set(json.loads(result.output)) == {"high-bw", "low-cost", "low-latency"}
    result = CliRunner().invoke(app, ["transport", "show", "preset=nope"])
    assert result.exit_code == 2 and "valid names: ['high-bw', 'low-cost', 'low-latency']" in result.output
    result = CliRunner().invoke(app, ["transport", "show", "backend=shm,chunk_bytes=4MiB"])
    assert result.exit_code == 0 and json.loads(result.output)["chunk_bytes"] == 4 << 20
    assert os.path.exists(out)
