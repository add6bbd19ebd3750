from __future__ import annotations

import subprocess
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from sagellm.hal.platforms import cuda as cuda_platform
from sagellm.hal.platforms.cuda import CudaPlatform

from .conftest import GiB, FakeDevice

A100 = FakeDevice("NVIDIA A100-SXM4-80GB", 80 * GiB, 8, 0)
T4 = FakeDevice("Tesla T4", 15 * GiB, 7, 5)
DCU = FakeDevice("K100_AI", 64 * GiB, 9, 2)


def test_cpu_only_torch_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert CudaPlatform.detect() is None
    d = CudaPlatform.describe()
    assert (d.usable, d.device_count) == (False, 0)
    assert d.reason == f"torch {torch.__version__} is built without CUDA or HIP"


def test_no_visible_device(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda([])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert CudaPlatform.describe().reason == "no CUDA/HIP device visible (CUDA_VISIBLE_DEVICES=)"


def test_two_a100_exact(fake_cuda) -> None:
    fake_cuda([A100, A100], peer=True)
    assert CudaPlatform.describe().to_dict() == {
        "platform": "cuda",
        "lmdeploy_device_type": "cuda",
        "dlinfer_vendor": None,
        "device_count": 2,
        "device_memory_bytes": [80 * GiB, 80 * GiB],
        "device_names": ["NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB"],
        "dtypes": ["float16", "bfloat16", "float32"],
        "kv_quant_policies": [0, 4, 8],
        "collective_backend": "nccl",
        "dist_backend": "nccl",
        "interconnect": "pcie",
        "required_block_size": None,
        "capabilities": {"runtime": "cuda 12.4", "compute_capability": "8.0,8.0", "probe": "torch", "p2p": True},
        "usable": True,
        "reason": None,
    }


def test_pre_ampere_has_no_bf16_and_single_device_no_interconnect(fake_cuda) -> None:
    fake_cuda([T4])
    d = CudaPlatform.describe()
    assert d.dtypes == ("float16", "float32")
    assert d.interconnect is None and "p2p" not in d.capabilities
    assert d.capabilities["compute_capability"] == "7.5"


def test_nvlink_from_nvidia_smi_topology(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda([A100, A100], peer=True)
    topo = "\tGPU0\tGPU1\nGPU0\t X \tNV12\nGPU1\tNV12\t X \n"
    monkeypatch.setattr(cuda_platform.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        cuda_platform.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=topo, stderr="")
    )
    assert CudaPlatform.describe().interconnect == "nvlink"


def test_hygon_dcu_runs_as_cuda_over_hip(fake_cuda) -> None:
    fake_cuda([DCU, DCU], runtime=("hip", "5.7.24164"), peer=False)
    d = CudaPlatform.describe()
    assert (d.usable, d.lmdeploy_device_type, d.collective_backend, d.dist_backend) == (True, "cuda", "nccl", "nccl")
    assert d.capabilities == {"runtime": "hip 5.7.24164", "compute_capability": "9.2,9.2", "probe": "torch", "p2p": False}
    assert d.dtypes == ("float16", "bfloat16", "float32")
    assert d.interconnect == "pcie"
    assert d.device_names == ("K100_AI", "K100_AI")


def test_metax_devices_are_not_claimed(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda([FakeDevice("MetaX C500", 64 * GiB, 8, 0)])
    monkeypatch.setenv("MACA_PATH", "/opt/maca")
    d = CudaPlatform.describe()
    assert d.usable is False and d.device_count == 1
    assert d.reason == "CUDA-API devices here belong to MetaX MACA toolkit (MACA_PATH=/opt/maca): select platform 'maca'"


def _fake_pynvml(nvlink: bool) -> ModuleType:
    nvml = ModuleType("pynvml")
    physical = {0: ("NVIDIA H100 80GB HBM3", 80 * GiB), 3: ("NVIDIA H100 80GB HBM3", 81 * GiB)}
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetName = lambda h: physical[h][0].encode()  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=physical[h][1])  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetNvLinkState = lambda h, link: int(nvlink)  # type: ignore[attr-defined]
    return nvml


def test_nvml_path_follows_visible_devices(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda([A100, A100])  # torch's answers must not be used when NVML works
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(nvlink=True))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    d = CudaPlatform.describe()
    assert d.device_names == ("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")
    assert d.device_memory_bytes == (80 * GiB, 81 * GiB)
    assert d.capabilities["probe"] == "nvml" and d.capabilities["compute_capability"] == "9.0,9.0"
    assert d.interconnect == "nvlink"


def test_nvml_failure_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda([A100])
    nvml = _fake_pynvml(nvlink=False)

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = fail  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    d = CudaPlatform.describe()
    assert d.capabilities["probe"] == "torch" and d.device_names == ("NVIDIA A100-SXM4-80GB",)


def test_detection_error_becomes_unusable_descriptor(monkeypatch: pytest.MonkeyPatch, fake_cuda) -> None:
    fake_cuda([A100])

    def boom(index: int) -> None:
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(torch.cuda, "get_device_properties", boom)
    d = CudaPlatform.describe()
    assert d.usable is False
    assert d.reason == "detection failed: RuntimeError: CUDA driver version is insufficient"
