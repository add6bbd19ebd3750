from __future__ import annotations

import pytest

from sagellm.hal.types import AcceleratorDescriptor, PlatformInfo


def _descriptor(**overrides: object) -> AcceleratorDescriptor:
    fields: dict[str, object] = dict(
        platform="cuda",
        lmdeploy_device_type="cuda",
        dlinfer_vendor=None,
        device_count=2,
        device_memory_bytes=(80, 40),
        device_names=("a", "b"),
        dtypes=("float16",),
        kv_quant_policies=(0, 4, 8),
        collective_backend="nccl",
        dist_backend="nccl",
        interconnect="nvlink",
        required_block_size=None,
        capabilities={"runtime": "cuda 12.4"},
        usable=True,
        reason=None,
    )
    fields.update(overrides)
    return AcceleratorDescriptor(**fields)  # type: ignore[arg-type]


def test_platform_info_rejects_inconsistent_values() -> None:
    with pytest.raises(ValueError, match="device_count must be >= 0"):
        PlatformInfo(device_count=-1, usable=False, reason="x")
    with pytest.raises(ValueError, match="device_names has 1 entries for 2 devices"):
        PlatformInfo(device_count=2, device_names=("a",))
    with pytest.raises(ValueError, match="needs at least one device"):
        PlatformInfo(device_count=0)
    with pytest.raises(ValueError, match="needs a reason"):
        PlatformInfo(device_count=1, usable=False)


def test_platform_info_capabilities_are_read_only() -> None:
    info = PlatformInfo(device_count=1, capabilities={"cores": 4})
    with pytest.raises(TypeError):
        info.capabilities["cores"] = 8  # type: ignore[index]


def test_descriptor_reason_must_match_usable() -> None:
    with pytest.raises(ValueError, match="carries no reason"):
        _descriptor(reason="nope")
    with pytest.raises(ValueError, match="needs a reason"):
        _descriptor(usable=False)


def test_descriptor_helpers_and_dict() -> None:
    d = _descriptor()
    assert d.total_memory_bytes == 120
    assert d.supports_kv_quant(4) and not d.supports_kv_quant(2)
    assert d.to_dict() == {
        "platform": "cuda",
        "lmdeploy_device_type": "cuda",
        "dlinfer_vendor": None,
        "device_count": 2,
        "device_memory_bytes": [80, 40],
        "device_names": ["a", "b"],
        "dtypes": ["float16"],
        "kv_quant_policies": [0, 4, 8],
        "collective_backend": "nccl",
        "dist_backend": "nccl",
        "interconnect": "nvlink",
        "required_block_size": None,
        "capabilities": {"runtime": "cuda 12.4"},
        "usable": True,
        "reason": None,
    }
    assert d == _descriptor()
