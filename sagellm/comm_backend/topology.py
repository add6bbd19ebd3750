"""Topology probe: what this host offers for moving KV, as a ``HardwareProfile``.

:func:`probe` gathers, each step bounded in time:

- devices, from ``sagellm.hal.detect_platforms`` (accelerators and the CPU);
- device links, from the vendor tool when it is on ``PATH`` (``nvidia-smi topo -m``,
  ``npu-smi info -t topo``, ``rocm-smi --showtopotype``, ``cnmon topo -m``, ``mx-smi topo -m``,
  ``xpu-smi topo -m``): their matrices name NVLink/HCCS/xGMI/MLU-Link or PCIe paths
  between each device pair;
- NUMA nodes, their CPUs, memory and distances, from ``/sys/devices/system/node``;
- host memory-copy bandwidth, measured with torch (numpy if torch is absent);

and recommends one of the presets in ``configs/kv_transport_presets.yaml`` with the reason.
"""

from __future__ import annotations

import os
import platform as _platform
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sagellm.core.capability import INTERCONNECTS
from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_choice, check_float, check_int, check_str, invalid

#: Link kinds a profile reports: device interconnects plus ``numa`` (between NUMA nodes).
LINK_KINDS: tuple[str, ...] = tuple(k for k in INTERCONNECTS if k != "none") + ("numa",)
FAST_LINKS: tuple[str, ...] = ("nvlink", "hccs", "xgmi", "mlu_link", "xpu_link")
#: Host copy bandwidth above which shared memory is the cheap path on a CPU-only host.
LOW_LATENCY_MIN_GBPS = 4.0
TOOL_TIMEOUT_S = 10.0
NODE_ROOT = Path("/sys/devices/system/node")

#: (tool, command) pairs whose output is a device-by-device topology matrix.
TOPOLOGY_TOOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nvidia-smi", ("nvidia-smi", "topo", "-m")),
    ("npu-smi", ("npu-smi", "info", "-t", "topo")),
    ("rocm-smi", ("rocm-smi", "--showtopotype")),
    ("cnmon", ("cnmon", "topo", "-m")),
    ("mx-smi", ("mx-smi", "topo", "-m")),
    ("xpu-smi", ("xpu-smi", "topo", "-m")),
)

_DEVICE_TOKEN = re.compile(r"^(GPU|NPU|MLU|XPU|DCU)\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class DeviceEntry(SerializableMixin):
    """One device: ``platform`` (hal name), index, name, memory in bytes, whether the engine can use it."""

    platform: str
    index: int
    name: str
    memory_bytes: int
    usable: bool

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "platform", self.platform)
        check_int(owner, "index", self.index, minimum=0)
        check_str(owner, "name", self.name, allow_empty=True)
        check_int(owner, "memory_bytes", self.memory_bytes, minimum=0)


@dataclass(frozen=True)
class LinkEntry(SerializableMixin):
    """A link between two endpoints (``GPU0``/``GPU1``, ``node0``/``node1``).

    Attributes:
        kind: one of ``LINK_KINDS``.
        endpoints: the two ends, as the tool names them.
        detail: the tool's own cell (``NV12``, ``PIX``, ``HCCS``) or the NUMA distance.
        source: the tool or file it came from.
    """

    kind: str
    endpoints: tuple[str, str]
    detail: str
    source: str

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "kind", self.kind, LINK_KINDS)
        check_str(owner, "source", self.source)


@dataclass(frozen=True)
class NumaNode(SerializableMixin):
    """A NUMA node: its CPU list (``0-15``), memory and distances to every node (node order)."""

    node_id: int
    cpus: str
    memory_bytes: int
    distances: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "node_id", self.node_id, minimum=0)
        check_int(owner, "memory_bytes", self.memory_bytes, minimum=0)


@dataclass(frozen=True)
class MemcpyResult(SerializableMixin):
    """Host memory-copy bandwidth: one buffer copied ``repetitions`` times (GB/s = 1e9 bytes/s)."""

    method: str
    buffer_bytes: int
    repetitions: int
    best_gbps: float
    median_gbps: float
    elapsed_s: float

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "method", self.method, ("torch", "numpy"))
        check_int(owner, "buffer_bytes", self.buffer_bytes, minimum=1)
        check_int(owner, "repetitions", self.repetitions, minimum=1)
        check_float(owner, "best_gbps", self.best_gbps, positive=True)
        check_float(owner, "median_gbps", self.median_gbps, positive=True)
        if self.median_gbps > self.best_gbps:
            raise invalid(owner, "median_gbps", self.median_gbps, f"<= best_gbps ({self.best_gbps})")
        check_float(owner, "elapsed_s", self.elapsed_s, minimum=0.0)


@dataclass(frozen=True)
class ToolRun(SerializableMixin):
    """What happened when the probe looked for a tool: ``found`` on PATH, ``ok`` if it ran, a note."""

    name: str
    found: bool
    ok: bool
    note: str = ""


@dataclass(frozen=True)
class HardwareProfile(SerializableMixin):
    """What ``sage transport probe`` measured on one host.

    Attributes:
        hostname: the host's name.
        probed_at: seconds since the epoch.
        machine: CPU architecture (``x86_64``, ``aarch64``).
        platform: the accelerator platform the engine would use (``auto``), else ``cpu``.
        devices: every device found, usable or not.
        links: device-to-device and NUMA links.
        numa_nodes: NUMA nodes (empty where sysfs does not expose them).
        memcpy: host copy bandwidth, None when not measured.
        tools: the topology tools looked for and what they gave.
        recommended_preset: a preset name from the presets file.
        reason: why that preset.
    """

    hostname: str
    probed_at: float
    machine: str
    platform: str
    devices: tuple[DeviceEntry, ...]
    links: tuple[LinkEntry, ...]
    numa_nodes: tuple[NumaNode, ...]
    memcpy: MemcpyResult | None
    tools: tuple[ToolRun, ...]
    recommended_preset: str
    reason: str

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "hostname", self.hostname)
        check_float(owner, "probed_at", self.probed_at, minimum=0.0)
        check_str(owner, "platform", self.platform)
        check_str(owner, "recommended_preset", self.recommended_preset)
        check_str(owner, "reason", self.reason)
        if not self.devices:
            raise invalid(owner, "devices", self.devices, "at least one device (the CPU)")

    def summary(self) -> str:
        """A few human lines: devices, links, NUMA, bandwidth, recommendation."""
        lines = [f"host {self.hostname} ({self.machine}), platform {self.platform}"]
        for d in self.devices:
            mem = f"{d.memory_bytes / (1 << 30):.1f} GiB" if d.memory_bytes else "-"
            lines.append(f"  device {d.platform}:{d.index}  {d.name or '-'}  {mem}  {'usable' if d.usable else 'not usable'}")
        kinds = sorted({link.kind for link in self.links})
        lines.append(f"  links: {len(self.links)} ({', '.join(kinds) or 'none found'})")
        for node in self.numa_nodes:
            lines.append(f"  numa node{node.node_id}: cpus {node.cpus}, {node.memory_bytes / (1 << 30):.1f} GiB")
        if self.memcpy is not None:
            m = self.memcpy
            lines.append(
                f"  host memcpy ({m.method}, {m.buffer_bytes >> 20} MiB x {m.repetitions}): "
                f"best {m.best_gbps:.2f} GB/s, median {m.median_gbps:.2f} GB/s"
            )
        lines.append(f"recommended preset: {self.recommended_preset} -- {self.reason}")
        return "\n".join(lines)


# ------------------------------------------------------------------ parsing


def classify_link(cell: str) -> str | None:
    """Link kind of one topology-matrix cell; None for the diagonal / non-link cells."""
    value = cell.strip().upper().replace("-", "").replace("_", "")
    if value in ("X", "", "SELF", "0"):
        return None
    if re.fullmatch(r"NV\d*|NVLINK\d*", value):
        return "nvlink"
    if value.startswith("HCCS"):
        return "hccs"
    if value.startswith("XGMI"):
        return "xgmi"
    if value.startswith("MLULINK") or value.startswith("MLU"):
        return "mlu_link"
    if value.startswith("XPULINK") or value.startswith("XLINK"):
        return "xpu_link"
    if value in ("PIX", "PXB", "PHB", "NODE", "SYS", "PCIE", "SOC"):
        return "pcie"
    return "unknown"


def parse_topology_matrix(text: str, source: str) -> tuple[LinkEntry, ...]:
    """Links from a device-by-device matrix (the shape nvidia-smi, npu-smi, rocm-smi... print).

    The header row names the devices (``GPU0 GPU1 ...``); each row starting with a device
    name gives its link to every column device. Each unordered pair is reported once.
    """
    header: list[str] | None = None
    links: dict[tuple[str, str], LinkEntry] = {}
    for raw in text.splitlines():
        tokens = raw.replace("\t", " ").split()
        if not tokens:
            continue
        if header is None:
            leading = _leading_devices(tokens)
            if len(leading) >= 2:
                header = leading
            continue
        if not _DEVICE_TOKEN.match(tokens[0]):
            continue
        row = tokens[0]
        cells = tokens[1 : 1 + len(header)]
        for col, cell in zip(header, cells):
            if col == row:
                continue
            kind = classify_link(cell)
            if kind is None:
                continue
            key = tuple(sorted((row, col)))
            links.setdefault(key, LinkEntry(kind=kind, endpoints=(key[0], key[1]), detail=cell, source=source))  # type: ignore[arg-type]
    return tuple(links[k] for k in sorted(links))


def _leading_devices(tokens: list[str]) -> list[str]:
    """The run of device names (``GPU0 GPU1 ...``) a header row starts with."""
    run = []
    for token in tokens:
        if not _DEVICE_TOKEN.match(token):
            break
        run.append(token)
    return run


def parse_cpulist_count(cpus: str) -> int:
    """Number of CPUs in a sysfs list such as ``0-3,8-11``."""
    count = 0
    for part in cpus.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi) - int(lo) + 1 if hi else 1
    return count


# ------------------------------------------------------------------ probing


def probe_numa(root: Path = NODE_ROOT) -> tuple[tuple[NumaNode, ...], tuple[LinkEntry, ...]]:
    """NUMA nodes and the links between them (distance as detail) from sysfs; empty if absent."""
    nodes: list[NumaNode] = []
    if not root.is_dir():
        return (), ()
    for path in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        node_id = int(path.name[4:])
        cpus = _read(path / "cpulist")
        memory = 0
        match = re.search(r"MemTotal:\s+(\d+)\s*kB", _read(path / "meminfo"))
        if match:
            memory = int(match.group(1)) * 1024
        distances = tuple(int(x) for x in _read(path / "distance").split() if x.isdigit())
        nodes.append(NumaNode(node_id=node_id, cpus=cpus, memory_bytes=memory, distances=distances))
    links = []
    for a in nodes:
        for b in nodes:
            if a.node_id < b.node_id and b.node_id < len(a.distances):
                links.append(
                    LinkEntry(
                        kind="numa",
                        endpoints=(f"node{a.node_id}", f"node{b.node_id}"),
                        detail=f"distance {a.distances[b.node_id]}",
                        source=str(root),
                    )
                )
    return tuple(nodes), tuple(links)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def probe_tools(
    tools: Sequence[tuple[str, Sequence[str]]] = TOPOLOGY_TOOLS,
    *,
    which: Callable[[str], str | None] = shutil.which,
    timeout_s: float = TOOL_TIMEOUT_S,
) -> tuple[tuple[LinkEntry, ...], tuple[ToolRun, ...]]:
    """Run every topology tool found on PATH (each bounded by ``timeout_s``) and parse its matrix."""
    links: list[LinkEntry] = []
    runs: list[ToolRun] = []
    for name, command in tools:
        if which(command[0]) is None:
            runs.append(ToolRun(name=name, found=False, ok=False, note="not on PATH"))
            continue
        try:
            out = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            runs.append(ToolRun(name=name, found=True, ok=False, note=f"{type(exc).__name__}: {exc}"))
            continue
        if out.returncode != 0:
            note = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
            runs.append(ToolRun(name=name, found=True, ok=False, note=f"exit {out.returncode}: {note[0][:200]}"))
            continue
        found = parse_topology_matrix(out.stdout, source=" ".join(command))
        links.extend(found)
        runs.append(ToolRun(name=name, found=True, ok=True, note=f"{len(found)} link(s)"))
    return tuple(links), tuple(runs)


def measure_memcpy(
    buffer_bytes: int = 64 << 20, repetitions: int = 5, time_budget_s: float = 3.0
) -> MemcpyResult:
    """Copy one host buffer into another ``repetitions`` times (after one warm-up copy).

    Stops early once ``time_budget_s`` is spent (at least one timed copy). GB/s counts the
    bytes copied once (not read + write).
    """
    if buffer_bytes < 1 or repetitions < 1:
        raise ValueError(f"buffer_bytes and repetitions must be >= 1, got {buffer_bytes}, {repetitions}")
    try:
        import torch

        src = torch.ones(buffer_bytes, dtype=torch.uint8)
        dst = torch.empty_like(src)
        copy = dst.copy_
        method = "torch"
    except ImportError:
        import numpy as np

        src = np.ones(buffer_bytes, dtype=np.uint8)
        dst = np.empty_like(src)

        def copy(s):  # type: ignore[no-redef]
            np.copyto(dst, s)

        method = "numpy"
    copy(src)
    times: list[float] = []
    started = time.perf_counter()
    for _ in range(repetitions):
        t0 = time.perf_counter()
        copy(src)
        times.append(max(time.perf_counter() - t0, 1e-9))
        if time.perf_counter() - started > time_budget_s:
            break
    rates = sorted(buffer_bytes / t / 1e9 for t in times)
    return MemcpyResult(
        method=method,
        buffer_bytes=buffer_bytes,
        repetitions=len(times),
        best_gbps=round(rates[-1], 3),
        median_gbps=round(min(statistics.median(rates), rates[-1]), 3),
        elapsed_s=round(time.perf_counter() - started, 4),
    )


def recommend_preset(
    devices: Sequence[DeviceEntry], links: Sequence[LinkEntry], memcpy: MemcpyResult | None
) -> tuple[str, str]:
    """(preset name, reason) for what was found. Pure: the rules are the docstring of the presets file."""
    accelerators = [d for d in devices if d.platform != "cpu" and d.usable]
    fast = sorted({link.kind for link in links if link.kind in FAST_LINKS})
    if len(accelerators) >= 2 and fast:
        return "high-bw", (
            f"{len(accelerators)} {accelerators[0].platform} devices joined by {', '.join(fast)}: "
            "large chunks over several streams keep the fast links busy"
        )
    if accelerators:
        how = "a single device" if len(accelerators) == 1 else "devices linked only through PCIe/host"
        return "low-latency", f"{how}: KV is staged through host memory, so small chunks over shared memory start soonest"
    if memcpy is None:
        return "low-latency", "CPU only (bandwidth not measured): shared memory on one host avoids the network"
    if memcpy.best_gbps >= LOW_LATENCY_MIN_GBPS:
        return "low-latency", (
            f"CPU only; host memcpy {memcpy.best_gbps:.1f} GB/s >= {LOW_LATENCY_MIN_GBPS:g} GB/s: "
            "shared memory on one host is the cheapest path"
        )
    return "low-cost", (
        f"CPU only; host memcpy {memcpy.best_gbps:.1f} GB/s < {LOW_LATENCY_MIN_GBPS:g} GB/s: "
        "memory bandwidth is scarce, so compress and use one stream"
    )


def probe_devices() -> tuple[tuple[DeviceEntry, ...], str]:
    """Devices from the HAL, and the platform ``auto`` resolves to."""
    from sagellm.hal import detect_platforms

    entries: list[DeviceEntry] = []
    chosen = "cpu"
    for descriptor in detect_platforms():
        if descriptor.device_count == 0:
            continue
        if descriptor.usable and descriptor.platform != "cpu" and chosen == "cpu":
            chosen = descriptor.platform
        for index in range(descriptor.device_count):
            names = descriptor.device_names
            memory = descriptor.device_memory_bytes
            entries.append(
                DeviceEntry(
                    platform=descriptor.platform,
                    index=index,
                    name=names[index] if index < len(names) else "",
                    memory_bytes=memory[index] if index < len(memory) else 0,
                    usable=descriptor.usable,
                )
            )
    return tuple(entries), chosen


def probe(
    *,
    measure: bool = True,
    buffer_bytes: int = 64 << 20,
    repetitions: int = 5,
    time_budget_s: float = 3.0,
    presets_file: str | os.PathLike[str] | None = None,
) -> HardwareProfile:
    """Probe this host (see the module docstring); the recommended preset exists in the presets file."""
    from sagellm.comm_backend.transport_config import load_presets

    devices, chosen = probe_devices()
    tool_links, tools = probe_tools()
    numa_nodes, numa_links = probe_numa()
    memcpy = measure_memcpy(buffer_bytes, repetitions, time_budget_s) if measure else None
    links = tool_links + numa_links
    preset, reason = recommend_preset(devices, links, memcpy)
    load_presets(presets_file).get(preset)  # the recommendation must name a real preset
    return HardwareProfile(
        hostname=socket.gethostname() or "localhost",
        probed_at=round(time.time(), 3),
        machine=_platform.machine() or "unknown",
        platform=chosen,
        devices=devices,
        links=links,
        numa_nodes=numa_nodes,
        memcpy=memcpy,
        tools=tools,
        recommended_preset=preset,
        reason=reason,
    )
