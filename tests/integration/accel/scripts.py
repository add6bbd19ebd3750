"""Import the repository's scripts (``scripts/accuracy_guard.py``, ``benchmarks/kv_quant.py``) for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def load_script(relative_path: str):
    """The module at ``REPO_ROOT / relative_path``, imported once per process."""
    name = "sagellm_script_" + relative_path.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_guard():
    return load_script("scripts/accuracy_guard.py")


def load_kv_bench():
    return load_script("benchmarks/kv_quant.py")
