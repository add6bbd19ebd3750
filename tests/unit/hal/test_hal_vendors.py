"""Ascend, Cambricon, MetaX and Kunlunxin detection against stub vendor modules."""

from __future__ import annotations

import sys

import pytest

from sagellm.hal.platforms.ascend import AscendPlatform
from sagellm.hal.platforms.camb import CambPlatform
from sagellm.hal.platforms.kunlun import NO_BACKEND, KunlunPlatform
from sagellm.hal.platforms.maca import MacaPlatform

from .conftest import GiB, FakeDevice


# --- ascend -------------------------------------------------------------------------------


def test_ascend_absent_without_torch_npu() -> None:
    assert AscendPlatform.detect() is None
    d = AscendPlatform.describe()
    assert (d.usable, d.device_count, d.reason) == (False, 0, "torch_npu is not installed")
    assert "torch_npu" not in sys.modules and "dlinfer" not in sys.modules


def test_ascend_exact(fake_torch_npu, fake_dlinfer) -> None:
    fake_torch_npu(count=8)
    fake_dlinfer("ascend")
    assert AscendPlatform.describe().to_dict() == {
        "platform": "ascend",
        "lmdeploy_device_type": "ascend",
        "dlinfer_vendor": "ascend",
        "device_count": 8,
        "device_memory_bytes": [64 * GiB] * 8,
        "device_names": ["Ascend910B2"] * 8,
        "dtypes": ["float16", "bfloat16", "float32"],
        "kv_quant_policies": [0, 8],
        "collective_backend": "hccl",
        "dist_backend": "hccl",
        "interconnect": None,
        "required_block_size": None,
        "capabilities": {"torch_npu_version": "2.1.0.post8"},
        "usable": True,
        "reason": None,
    }
    assert "dlinfer" not in sys.modules


def test_ascend_without_dlinfer_lists_devices_but_is_unusable(fake_torch_npu) -> None:
    fake_torch_npu(count=2)
    d = AscendPlatform.describe()
    assert (d.usable, d.device_count) == (False, 2)
    assert d.reason == "dlinfer is not installed; LMDeploy's ascend backend needs the dlinfer ascend build"


def test_ascend_with_dlinfer_for_another_vendor(fake_torch_npu, fake_dlinfer) -> None:
    fake_torch_npu(count=1)
    fake_dlinfer("maca")
    assert AscendPlatform.describe().reason == (
        "dlinfer is built for vendor 'maca'; LMDeploy's ascend backend needs the ascend build"
    )


def test_ascend_no_visible_npu(fake_torch_npu, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch_npu(count=0)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "")
    d = AscendPlatform.describe()
    assert (d.usable, d.device_count) == (False, 0)
    assert d.reason == "torch_npu sees no NPU (ASCEND_RT_VISIBLE_DEVICES=)"


def test_ascend_torch_npu_installed_but_broken(broken_module) -> None:
    # torch_npu on x86 without CANN: find_spec succeeds, import fails.
    broken_module("torch_npu", 'ImportError("libascendcl.so: cannot open shared object file: No such file")')
    d = AscendPlatform.describe()
    assert (d.usable, d.device_count) == (False, 0)
    assert d.reason == (
        "torch_npu is installed but failed to import "
        "(ImportError: libascendcl.so: cannot open shared object file: No such file)"
    )


# --- camb ---------------------------------------------------------------------------------


def test_camb_exact_uses_mem_get_info(fake_torch_mlu, fake_dlinfer) -> None:
    fake_torch_mlu(count=4)
    fake_dlinfer("camb")
    assert CambPlatform.describe().to_dict() == {
        "platform": "camb",
        "lmdeploy_device_type": "camb",
        "dlinfer_vendor": "camb",
        "device_count": 4,
        "device_memory_bytes": [48 * GiB] * 4,
        "device_names": ["MLU370-X8"] * 4,
        "dtypes": ["float16", "bfloat16", "float32"],
        "kv_quant_policies": [0],
        "collective_backend": "cncl",
        "dist_backend": "cncl",
        "interconnect": None,
        "required_block_size": 16,
        "capabilities": {"torch_mlu_version": "1.24.0"},
        "usable": True,
        "reason": None,
    }


def test_camb_broken_torch_mlu(broken_module) -> None:
    broken_module("torch_mlu", 'RuntimeError("CNRT error: no MLU driver")')
    d = CambPlatform.describe()
    assert d.reason == "torch_mlu is installed but failed to import (RuntimeError: CNRT error: no MLU driver)"


def test_camb_absent() -> None:
    assert CambPlatform.describe().reason == "torch_mlu is not installed"
    assert "torch_mlu" not in sys.modules


# --- maca ---------------------------------------------------------------------------------


def test_maca_absent_without_toolkit(tmp_path) -> None:
    assert MacaPlatform.detect() is None
    assert MacaPlatform.describe().reason == (
        f"no MetaX MACA toolkit found (MACA_PATH unset, {tmp_path / 'absent-opt-maca'} absent)"
    )


def test_maca_exact(monkeypatch: pytest.MonkeyPatch, fake_cuda, fake_dlinfer) -> None:
    monkeypatch.setenv("MACA_PATH", "/opt/maca")
    fake_cuda([FakeDevice("MetaX C500", 64 * GiB, 8, 0)] * 2)
    fake_dlinfer("maca")
    assert MacaPlatform.describe().to_dict() == {
        "platform": "maca",
        "lmdeploy_device_type": "maca",
        "dlinfer_vendor": "maca",
        "device_count": 2,
        "device_memory_bytes": [64 * GiB] * 2,
        "device_names": ["MetaX C500"] * 2,
        "dtypes": ["float16", "bfloat16", "float32"],
        "kv_quant_policies": [0],
        "collective_backend": "mccl",
        "dist_backend": "nccl",
        "interconnect": None,
        "required_block_size": None,
        "capabilities": {"maca": "MACA_PATH=/opt/maca"},
        "usable": True,
        "reason": None,
    }


def test_maca_toolkit_without_devices(monkeypatch: pytest.MonkeyPatch, no_cuda, tmp_path) -> None:
    (tmp_path / "absent-opt-maca").mkdir()
    d = MacaPlatform.describe()
    assert d.usable is False
    assert d.reason == (
        f"MACA toolkit found ({tmp_path / 'absent-opt-maca'}) but torch sees no CUDA-API device; "
        "install MetaX's torch build"
    )


# --- kunlun -------------------------------------------------------------------------------


def test_kunlun_is_listed_but_never_usable(fake_torch_xmlir) -> None:
    fake_torch_xmlir(count=2)
    d = KunlunPlatform.describe()
    assert d.to_dict() == {
        "platform": "kunlun",
        "lmdeploy_device_type": None,
        "dlinfer_vendor": None,
        "device_count": 2,
        "device_memory_bytes": [96 * GiB] * 2,
        "device_names": ["Kunlun P800"] * 2,
        "dtypes": ["float16", "bfloat16", "float32"],
        "kv_quant_policies": [0],
        "collective_backend": "bkcl",
        "dist_backend": None,
        "interconnect": None,
        "required_block_size": None,
        "capabilities": {"plugin": "torch_xmlir"},
        "usable": False,
        "reason": NO_BACKEND,
    }


def test_kunlun_absent() -> None:
    d = KunlunPlatform.describe()
    assert d.reason.startswith("none of torch_xmlir, torch_klx is installed")
    assert "torch_xmlir" not in sys.modules and "torch_klx" not in sys.modules


def test_kunlun_cuda_api_build_via_driver_node(fake_cuda, tmp_path) -> None:
    (tmp_path / "absent-xpuctrl").touch()
    fake_cuda([FakeDevice("P800", 96 * GiB, 8, 0)])
    d = KunlunPlatform.describe()
    assert (d.usable, d.device_count, d.reason) == (False, 1, NO_BACKEND)
    assert d.capabilities["plugin"] == "torch (CUDA-API build)"
