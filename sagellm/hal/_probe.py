"""Cheap, crash-proof probes shared by the platform detectors.

Rules every detector follows through these helpers:
- a vendor module is looked up with ``importlib.util.find_spec`` first and imported only
  when it is installed;
- an installed module that fails to import (``torch_npu`` on x86 without CANN) is reported
  as an error string, never raised;
- ``dlinfer`` is never imported: ``dlinfer.framework.lmdeploy_ext`` replaces LMDeploy methods
  at import, so the HAL only locates the package and reads which vendor it was built for.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: MetaX installs its MACA toolkit here unless ``MACA_PATH`` says otherwise.
MACA_DEFAULT_PATH = Path("/opt/maca")
#: Control node of the Kunlunxin XPU driver (next to ``/dev/xpu0``, ``/dev/xpu1``...).
KUNLUN_CTRL_NODE = Path("/dev/xpuctrl")


def module_installed(name: str) -> bool:
    """Whether top-level module ``name`` can be imported, without importing it.

    A module already in ``sys.modules`` counts as installed (a ``None`` entry, the
    "import blocked" marker, does not); otherwise ``find_spec`` decides.
    """
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class ImportResult:
    """Outcome of :func:`import_installed`: the module, or why there is none."""

    module: ModuleType | None
    installed: bool
    error: str | None = None


def import_installed(name: str) -> ImportResult:
    """Import ``name`` only if it is installed; report a failing import instead of raising."""
    if not module_installed(name):
        return ImportResult(module=None, installed=False)
    try:
        return ImportResult(module=importlib.import_module(name), installed=True)
    except BaseException as exc:  # noqa: BLE001 - vendor imports raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return ImportResult(module=None, installed=True, error=f"{type(exc).__name__}: {exc}")


def describe_import_failure(name: str, error: str) -> str:
    return f"{name} is installed but failed to import ({error})"


def torch_module() -> ModuleType | None:
    """``torch`` if installed (imported lazily), else None."""
    result = import_installed("torch")
    return result.module


def dlinfer_problem(vendor: str) -> str | None:
    """Why LMDeploy's dlinfer backend for ``vendor`` cannot load here, or None if it can.

    Looks at the installed ``dlinfer`` package without importing it: its ``vendor/vendor.yaml``
    names the single vendor the build targets.
    """
    if not module_installed("dlinfer"):
        return f"dlinfer is not installed; LMDeploy's {vendor} backend needs the dlinfer {vendor} build"
    built_for = dlinfer_built_vendor()
    if built_for is not None and built_for != vendor:
        return f"dlinfer is built for vendor {built_for!r}; LMDeploy's {vendor} backend needs the {vendor} build"
    return None


def dlinfer_built_vendor() -> str | None:
    """The vendor the installed dlinfer targets, read from ``dlinfer/vendor/vendor.yaml``; None if unknown."""
    for location in _package_locations("dlinfer"):
        config = Path(location) / "vendor" / "vendor.yaml"
        try:
            text = config.read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "vendor":
                return value.strip().strip("'\"") or None
    return None


def _package_locations(name: str) -> Sequence[str]:
    module = sys.modules.get(name)
    if module is not None:
        return list(getattr(module, "__path__", []) or [])
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return list(spec.submodule_search_locations)


def maca_marker() -> str | None:
    """Evidence that this host runs MetaX's MACA stack (its torch build speaks the CUDA API)."""
    env_path = os.environ.get("MACA_PATH")
    if env_path:
        return f"MACA_PATH={env_path}"
    if MACA_DEFAULT_PATH.is_dir():
        return str(MACA_DEFAULT_PATH)
    return None


def kunlun_marker() -> str | None:
    """Evidence that this host has Kunlunxin XPUs (driver control node present)."""
    return str(KUNLUN_CTRL_NODE) if KUNLUN_CTRL_NODE.exists() else None


def visible_devices_note(env_var: str) -> str:
    return f"{env_var}={os.environ.get(env_var, '<unset>')}"


@dataclass(frozen=True)
class DeviceTable:
    """Per-device facts read from a ``torch.cuda``-like namespace."""

    count: int
    names: tuple[str, ...]
    memory_bytes: tuple[int, ...]


def read_devices(namespace: Any, count: int) -> DeviceTable:
    """Names and total memory of ``count`` devices from a ``torch.cuda``-like namespace.

    Memory comes from ``get_device_properties(i).total_memory`` and, where a namespace lacks
    it, from ``mem_get_info(i)[1]`` (both are in torch.cuda, torch_npu.npu and torch_mlu).
    """
    names = tuple(str(namespace.get_device_name(i)) for i in range(count))
    memory = tuple(_device_total_memory(namespace, i) for i in range(count))
    return DeviceTable(count=count, names=names, memory_bytes=memory)


def _device_total_memory(namespace: Any, index: int) -> int:
    get_properties: Callable[[int], Any] | None = getattr(namespace, "get_device_properties", None)
    if get_properties is not None:
        total = getattr(get_properties(index), "total_memory", None)
        if total is not None:
            return int(total)
    return int(namespace.mem_get_info(index)[1])
