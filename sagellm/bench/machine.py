"""Where a benchmark ran: machine, load, versions, git state (standard library only).

Engine workers that run in other virtual environments (vLLM's ``.venv-vllm``) import this module
with the repository root on ``sys.path``; it must not import anything outside the standard library.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["REPO_ROOT", "default_model", "git_state", "git_commit", "loadavg", "machine_info", "pkg_version"]


def pkg_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def loadavg() -> list[float] | None:
    """1/5/15-minute load average (how busy the shared machine was)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _proc_field(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict:
    """CPU model, usable cores, RAM, platform, Python and the load average right now."""
    mem = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpus": gpu_names(),
        "loadavg_1_5_15": loadavg(),
    }


def gpu_names() -> list[str]:
    """One ``"name, memory"`` entry per NVIDIA GPU that ``nvidia-smi`` lists; empty without one."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        out = subprocess.run([tool, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def git_commit(root: Path = REPO_ROOT) -> str | None:
    return git_state(root)["commit"]


def git_state(root: Path = REPO_ROOT) -> dict:
    """``{"commit": sha or None, "dirty": bool}`` of the checkout at ``root``."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": False}
    return {"commit": head.stdout.strip() or None, "dirty": bool(status.stdout.strip())}


def default_model() -> str | None:
    """The embedded default model (created on first use), or None when sagellm.models is unavailable."""
    try:
        from sagellm.models.tiny import ensure_default_model
    except Exception:  # noqa: BLE001 - not importable in this interpreter
        return None
    return str(ensure_default_model())
