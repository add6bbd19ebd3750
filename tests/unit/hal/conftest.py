"""Stub vendor stacks for HAL tests, so every platform is exercised on a CPU-only host.

- Device plugins (``torch_npu``, ``torch_mlu``, ``torch_xmlir``) are ``ModuleType`` stubs put
  in ``sys.modules``; their device namespaces mimic ``torch.cuda``.
- ``dlinfer`` and the "installed but broken" modules are real packages written to a temp dir
  on ``sys.path``, so ``find_spec`` finds them and a broken one fails on import, as on a host
  with ``torch_npu`` but without CANN.
- Every test runs hermetically: env overrides are cleared, the MetaX/Kunlunxin marker paths
  point into a temp dir, and vendor modules installed on the host are hidden.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from sagellm.hal import _probe
from sagellm.hal.platforms import cuda as cuda_platform

GiB = 2**30
VENDOR_MODULES = ("torch_npu", "torch_mlu", "torch_xmlir", "torch_klx", "dlinfer", "pynvml")
ENV_VARS = (
    "SAGELLM_DEVICE",
    "MACA_PATH",
    "ASCEND_RT_VISIBLE_DEVICES",
    "MLU_VISIBLE_DEVICES",
)


@pytest.fixture(autouse=True)
def hermetic_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_probe, "MACA_DEFAULT_PATH", tmp_path / "absent-opt-maca")
    monkeypatch.setattr(_probe, "KUNLUN_CTRL_NODE", tmp_path / "absent-xpuctrl")
    for name in VENDOR_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            monkeypatch.setitem(sys.modules, name, None)  # installed on this host: hide it


@dataclass
class FakeDevice:
    name: str
    total_memory: int
    major: int = 0
    minor: int = 0


class FakeDeviceAPI:
    """A ``torch.cuda``-like namespace over a fixed list of devices."""

    def __init__(self, devices: Sequence[FakeDevice], with_properties: bool = True) -> None:
        self._devices = list(devices)
        if with_properties:
            self.get_device_properties = self._get_device_properties

    def device_count(self) -> int:
        return len(self._devices)

    def is_available(self) -> bool:
        return bool(self._devices)

    def get_device_name(self, index: int = 0) -> str:
        return self._devices[index].name

    def _get_device_properties(self, index: int) -> SimpleNamespace:
        d = self._devices[index]
        return SimpleNamespace(name=d.name, total_memory=d.total_memory, major=d.major, minor=d.minor)

    def mem_get_info(self, index: int = 0) -> tuple[int, int]:
        total = self._devices[index].total_memory
        return total // 2, total


def _stub_module(name: str, version: str, **attrs: object) -> ModuleType:
    module = ModuleType(name)
    module.__version__ = version  # type: ignore[attr-defined]
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def write_package(root: Path, name: str, init_text: str = "", files: dict[str, str] | None = None) -> Path:
    package = root / name
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent(init_text))
    for relative, text in (files or {}).items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


@pytest.fixture
def site_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp directory on ``sys.path`` for on-disk fake packages."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def fake_dlinfer(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Install an on-disk ``dlinfer`` built for a vendor. Importing it fails loudly: the HAL must not."""

    def install(vendor: str) -> Path:
        monkeypatch.delitem(sys.modules, "dlinfer", raising=False)
        return write_package(
            site_dir,
            "dlinfer",
            'raise AssertionError("the HAL must never import dlinfer")\n',
            {"vendor/vendor.yaml": f"vendor: {vendor}\ndispatch_key: PrivateUse1\n"},
        )

    return install


@pytest.fixture
def fake_torch_npu(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    """Install a stub ``torch_npu`` whose ``npu`` namespace lists ``count`` Ascend 910B2 (64 GiB)."""

    def install(count: int = 8, name: str = "Ascend910B2", memory: int = 64 * GiB) -> ModuleType:
        api = FakeDeviceAPI([FakeDevice(name, memory) for _ in range(count)])
        module = _stub_module("torch_npu", "2.1.0.post8", npu=api)
        monkeypatch.setitem(sys.modules, "torch_npu", module)
        return module

    return install


@pytest.fixture
def fake_torch_mlu(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    """Install a stub ``torch_mlu``; its ``mlu`` namespace has ``mem_get_info`` but no device properties."""

    def install(count: int = 4, name: str = "MLU370-X8", memory: int = 48 * GiB) -> ModuleType:
        api = FakeDeviceAPI([FakeDevice(name, memory) for _ in range(count)], with_properties=False)
        module = _stub_module("torch_mlu", "1.24.0", mlu=api)
        monkeypatch.setitem(sys.modules, "torch_mlu", module)
        return module

    return install


@pytest.fixture
def fake_torch_xmlir(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    """Install a stub Kunlunxin ``torch_xmlir`` with an ``xpu`` namespace."""

    def install(count: int = 2, name: str = "Kunlun P800", memory: int = 96 * GiB) -> ModuleType:
        api = FakeDeviceAPI([FakeDevice(name, memory) for _ in range(count)])
        module = _stub_module("torch_xmlir", "0.3.0", xpu=api)
        monkeypatch.setitem(sys.modules, "torch_xmlir", module)
        return module

    return install


@pytest.fixture
def broken_module(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Path]:
    """Install an on-disk module that ``find_spec`` finds and whose import raises ``error``."""

    def install(name: str, error: str) -> Path:
        monkeypatch.delitem(sys.modules, name, raising=False)
        return write_package(site_dir, name, f"raise {error}\n")

    return install


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeDeviceAPI]:
    """Make ``torch.cuda`` report the given devices (no NVML, no nvidia-smi unless a test adds them)."""

    def install(
        devices: Sequence[FakeDevice], runtime: tuple[str, str] = ("cuda", "12.4"), peer: bool = True
    ) -> FakeDeviceAPI:
        api = FakeDeviceAPI(devices)
        kind, version = runtime
        monkeypatch.setattr(torch.version, "cuda", version if kind == "cuda" else None)
        monkeypatch.setattr(torch.version, "hip", version if kind == "hip" else None)
        for attr in ("is_available", "device_count", "get_device_name", "get_device_properties", "mem_get_info"):
            monkeypatch.setattr(torch.cuda, attr, getattr(api, attr))
        monkeypatch.setattr(torch.cuda, "can_device_access_peer", lambda a, b: peer)
        monkeypatch.setitem(sys.modules, "pynvml", None)
        monkeypatch.setattr(cuda_platform.shutil, "which", lambda _name: None)
        return api

    return install


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide any real GPU so selection tests behave the same on every host."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
