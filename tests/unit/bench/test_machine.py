"""Machine facts recorded with every benchmark run."""

from __future__ import annotations

import os
import stat

from sagellm.bench import machine


def _fake_tool(folder, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_gpu_names_lists_what_nvidia_smi_reports(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "nvidia-smi", "echo 'NVIDIA H100 80GB HBM3, 81559 MiB'\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert machine.gpu_names() == ["NVIDIA H100 80GB HBM3, 81559 MiB"]
    assert machine.machine_info()["gpus"] == ["NVIDIA H100 80GB HBM3, 81559 MiB"]


def test_gpu_names_is_empty_when_nvidia_smi_fails_or_is_absent(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert machine.gpu_names() == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert machine.gpu_names() == []
