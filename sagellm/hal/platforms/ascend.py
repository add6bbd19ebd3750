"""Huawei Ascend NPUs: ``torch_npu`` for the devices, ``dlinfer`` (ascend build) for LMDeploy's kernels."""

from __future__ import annotations

from typing import ClassVar

from sagellm.hal.platforms._vendor import VendorProbe, detect_vendor_devices
from sagellm.hal.platforms.base import Platform
from sagellm.hal.types import KV_QUANT_INT8, KV_QUANT_NONE, PlatformInfo

PROBE = VendorProbe(
    module="torch_npu",
    namespace="npu",
    visible_env="ASCEND_RT_VISIBLE_DEVICES",
    device_word="NPU",
    dlinfer_vendor="ascend",
)


class AscendPlatform(Platform):
    name: ClassVar[str] = "ascend"
    lmdeploy_device_type: ClassVar[str | None] = "ascend"
    dlinfer_vendor: ClassVar[str | None] = "ascend"
    # int8 only, with static per-layer scales from a file; no int4 KV on Ascend.
    kv_quant_policies: ClassVar[tuple[int, ...]] = (KV_QUANT_NONE, KV_QUANT_INT8)
    collective_backend: ClassVar[str | None] = "hccl"
    dist_backend: ClassVar[str | None] = "hccl"
    # LMDeploy 0.11 is_bf16_supported('ascend') is True (Ascend 910 series).
    default_dtypes: ClassVar[tuple[str, ...]] = ("float16", "bfloat16", "float32")
    vendor_modules: ClassVar[tuple[str, ...]] = ("torch_npu",)

    @classmethod
    def detect(cls) -> PlatformInfo | None:
        return detect_vendor_devices(PROBE)
