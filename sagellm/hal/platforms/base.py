"""The platform contract: static facts about LMDeploy 0.11 on a device, plus one cheap detector."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from sagellm.hal.types import AcceleratorDescriptor, PlatformInfo


class Platform(ABC):
    """One accelerator family. Subclasses set the class attributes and implement :meth:`detect`.

    The class attributes are what LMDeploy 0.11 does on the device type (read from its
    ``PytorchEngineConfig``, op backends and ``is_bf16_supported``); :meth:`detect` adds what
    this host has. :meth:`describe` joins the two into an :class:`AcceleratorDescriptor`.
    """

    name: ClassVar[str]
    #: ``PytorchEngineConfig.device_type``; None when LMDeploy 0.11 has no backend.
    lmdeploy_device_type: ClassVar[str | None]
    #: dlinfer build LMDeploy's backend imports (``dlinfer.framework.lmdeploy_ext``), if any.
    dlinfer_vendor: ClassVar[str | None] = None
    #: ``quant_policy`` values LMDeploy 0.11 accepts (messages.py: 4/8 only on cuda and ascend).
    kv_quant_policies: ClassVar[tuple[int, ...]] = (0,)
    collective_backend: ClassVar[str | None]
    dist_backend: ClassVar[str | None]
    #: dtype names used when the detector does not report its own list.
    default_dtypes: ClassVar[tuple[str, ...]] = ("float16", "bfloat16", "float32")
    required_block_size: ClassVar[int | None] = None
    #: vendor modules the detector probes, in order (documentation and error messages).
    vendor_modules: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def detect(cls) -> PlatformInfo | None:
        """What this host has, or None when the platform is absent. Must be cheap and never raise."""

    @classmethod
    def absent_reason(cls) -> str:
        """Why :meth:`detect` returned None. Override for a more precise answer."""
        modules = " / ".join(cls.vendor_modules) or cls.name
        return f"{modules} is not installed"

    @classmethod
    def describe(cls) -> AcceleratorDescriptor:
        """Detect and return the descriptor; detection errors become an unusable descriptor."""
        try:
            info = cls.detect()
        except Exception as exc:  # noqa: BLE001 - a listing must survive a broken vendor stack
            info = PlatformInfo(
                device_count=0, usable=False, reason=f"detection failed: {type(exc).__name__}: {exc}"
            )
        if info is None:
            info = PlatformInfo(device_count=0, usable=False, reason=cls.absent_reason())
        return AcceleratorDescriptor(
            platform=cls.name,
            lmdeploy_device_type=cls.lmdeploy_device_type,
            dlinfer_vendor=cls.dlinfer_vendor,
            device_count=info.device_count,
            device_memory_bytes=tuple(info.device_memory_bytes),
            device_names=tuple(info.device_names),
            dtypes=tuple(info.dtypes) or cls.default_dtypes,
            kv_quant_policies=cls.kv_quant_policies,
            collective_backend=cls.collective_backend,
            dist_backend=cls.dist_backend,
            interconnect=info.interconnect,
            required_block_size=cls.required_block_size,
            capabilities=info.capabilities,
            usable=info.usable,
            reason=None if info.usable else info.reason,
        )
