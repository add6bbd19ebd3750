from __future__ import annotations

import sys

import pytest
import torch

from sagellm.core.registry import DuplicateNameError, UnknownNameError
from sagellm.hal import (
    PLATFORMS,
    PlatformUnavailableError,
    UnknownPlatformError,
    canonical_name,
    detect_platforms,
    platform_names,
    resolve_device,
)

from .conftest import VENDOR_MODULES, FakeDevice, GiB


def test_platform_order_and_registry_strictness() -> None:
    assert platform_names() == ["cuda", "ascend", "camb", "maca", "kunlun", "cpu"]
    with pytest.raises(DuplicateNameError):
        PLATFORMS.register("cpu", "sagellm.hal.platforms.cpu:CpuPlatform")
    with pytest.raises(UnknownNameError, match="valid names"):
        PLATFORMS.get("tpu")


def test_detect_platforms_lists_everything_without_vendor_imports(no_cuda) -> None:
    descriptors = detect_platforms()
    assert [d.platform for d in descriptors] == ["cuda", "ascend", "camb", "maca", "kunlun", "cpu"]
    assert [d.platform for d in descriptors if d.usable] == ["cpu"]
    for name in VENDOR_MODULES:
        assert sys.modules.get(name) is None, f"{name} was imported"


def test_auto_falls_back_to_cpu(no_cuda) -> None:
    assert resolve_device().platform == "cpu"
    assert resolve_device("auto").platform == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_auto_on_this_machine_is_cpu() -> None:
    assert resolve_device("auto").platform == "cpu"


def test_explicit_ascend_without_stack_is_a_clear_error(no_cuda) -> None:
    with pytest.raises(PlatformUnavailableError) as info:
        resolve_device("ascend")
    assert str(info.value) == (
        "platform 'ascend' (requested) is not usable: torch_npu is not installed. Usable here: cpu"
    )
    assert info.value.descriptor.platform == "ascend"
    assert "torch_npu" not in sys.modules


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownPlatformError) as info:
        resolve_device("tpu")
    message = str(info.value)
    assert message.startswith("unknown platform 'tpu'; valid: auto, cuda, ascend, camb, maca, kunlun, cpu")
    assert "npu=ascend" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_aliases_and_case() -> None:
    assert canonical_name(" NPU ") == "ascend"
    assert canonical_name("mlu") == "camb"
    assert canonical_name("dcu") == "cuda"
    assert resolve_device("CPU").platform == "cpu"


def test_auto_priority_prefers_ascend_over_camb(no_cuda, fake_torch_npu, fake_torch_mlu, fake_dlinfer) -> None:
    fake_torch_npu(count=1)
    fake_torch_mlu(count=1)
    fake_dlinfer("camb")  # only the camb stack is complete
    assert resolve_device().platform == "camb"
    fake_dlinfer("ascend")
    assert resolve_device().platform == "ascend"


def test_auto_prefers_cuda(fake_cuda) -> None:
    fake_cuda([FakeDevice("NVIDIA L40S", 45 * GiB, 8, 9)])
    assert resolve_device().platform == "cuda"


def test_env_override(monkeypatch: pytest.MonkeyPatch, no_cuda, fake_torch_npu, fake_dlinfer) -> None:
    fake_torch_npu(count=2)
    fake_dlinfer("ascend")
    monkeypatch.setenv("SAGELLM_DEVICE", "npu")
    assert resolve_device().platform == "ascend"
    assert resolve_device("cpu").platform == "cpu"  # an explicit argument wins over the env
    monkeypatch.setenv("SAGELLM_DEVICE", "auto")
    assert resolve_device().platform == "ascend"


def test_env_override_to_unusable_platform_names_the_env(monkeypatch: pytest.MonkeyPatch, no_cuda) -> None:
    monkeypatch.setenv("SAGELLM_DEVICE", "camb")
    with pytest.raises(PlatformUnavailableError, match=r"'camb' \(SAGELLM_DEVICE=camb\) is not usable: torch_mlu"):
        resolve_device()
    monkeypatch.setenv("SAGELLM_DEVICE", "bogus")
    with pytest.raises(UnknownPlatformError, match="unknown platform 'bogus'"):
        resolve_device()


def test_kunlun_explicit_request_explains_lmdeploy_gap(fake_torch_xmlir) -> None:
    fake_torch_xmlir(count=1)
    with pytest.raises(PlatformUnavailableError, match="LMDeploy 0.11 has no kunlun backend"):
        resolve_device("kunlun")
