"""Cambricon MLUs: ``torch_mlu`` for the devices, ``dlinfer`` (camb build) for LMDeploy's kernels."""

from __future__ import annotations

from typing import ClassVar

from sagellm.hal.platforms._vendor import VendorProbe, detect_vendor_devices
from sagellm.hal.platforms.base import Platform
from sagellm.hal.types import KV_QUANT_NONE, PlatformInfo

PROBE = VendorProbe(
    module="torch_mlu",
    namespace="mlu",
    visible_env="MLU_VISIBLE_DEVICES",
    device_word="MLU",
    dlinfer_vendor="camb",
)


class CambPlatform(Platform):
    name: ClassVar[str] = "camb"
    lmdeploy_device_type: ClassVar[str | None] = "camb"
    dlinfer_vendor: ClassVar[str | None] = "camb"
    kv_quant_policies: ClassVar[tuple[int, ...]] = (KV_QUANT_NONE,)
    collective_backend: ClassVar[str | None] = "cncl"
    dist_backend: ClassVar[str | None] = "cncl"
    # LMDeploy 0.11 is_bf16_supported('camb') is True.
    default_dtypes: ClassVar[tuple[str, ...]] = ("float16", "bfloat16", "float32")
    # PytorchEngineConfig.__post_init__ forces block_size=16 on camb.
    required_block_size: ClassVar[int | None] = 16
    vendor_modules: ClassVar[tuple[str, ...]] = ("torch_mlu",)

    @classmethod
    def detect(cls) -> PlatformInfo | None:
        return detect_vendor_devices(PROBE)
