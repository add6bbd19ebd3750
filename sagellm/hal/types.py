"""Value types of the HAL: what a detector found, and the descriptor the rest of sagellm reads.

Nothing here imports torch or a vendor module: dtypes are names (``"bfloat16"``), memory
is bytes, so descriptors can be printed, compared and serialized anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Union

from sagellm.core.registry import UnknownNameError

#: LMDeploy 0.11 ``PytorchEngineConfig.quant_policy`` values: 0 = fp KV, 4 = int4, 8 = int8 (on the cpu
#: device 8 is also fp8 KV, stored in the float8 dtype the device spec names).
KV_QUANT_NONE = 0
KV_QUANT_INT4 = 4
KV_QUANT_INT8 = 8

#: A capability value: capabilities are small facts for people and logs, not a schema.
CapabilityValue = Union[str, int, bool]


def _frozen_mapping(values: Mapping[str, CapabilityValue]) -> Mapping[str, CapabilityValue]:
    return MappingProxyType(dict(values))


@dataclass(frozen=True)
class PlatformInfo:
    """What one detector found on this host.

    A detector returns ``None`` when its platform is absent (vendor module not installed,
    no device visible) and a ``PlatformInfo`` when it is present, usable or not.

    Attributes:
        device_count: devices visible to this process.
        device_names: one name per device.
        device_memory_bytes: total memory of each device, in bytes.
        dtypes: dtype names the devices run; empty means "the platform's default list".
        interconnect: device-to-device link (``"nvlink"``, ``"pcie"``, ...), None if unknown.
        capabilities: extra facts (compute capability, runtime version, CPU ISA flags...).
        usable: whether sagellm can run the LMDeploy engine on it.
        reason: why not, when ``usable`` is False (required then).
    """

    device_count: int
    device_names: tuple[str, ...] = ()
    device_memory_bytes: tuple[int, ...] = ()
    dtypes: tuple[str, ...] = ()
    interconnect: str | None = None
    capabilities: Mapping[str, CapabilityValue] = field(default_factory=dict, hash=False)
    usable: bool = True
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.device_count < 0:
            raise ValueError(f"device_count must be >= 0, got {self.device_count}")
        for label, values in (("device_names", self.device_names), ("device_memory_bytes", self.device_memory_bytes)):
            if values and len(values) != self.device_count:
                raise ValueError(f"{label} has {len(values)} entries for {self.device_count} devices")
        if self.usable and self.device_count == 0:
            raise ValueError("a usable platform needs at least one device")
        if not self.usable and not self.reason:
            raise ValueError("an unusable platform needs a reason")
        object.__setattr__(self, "capabilities", _frozen_mapping(self.capabilities))


@dataclass(frozen=True)
class AcceleratorDescriptor:
    """One platform as sagellm sees it: what is there, and how LMDeploy 0.11 runs on it.

    Attributes:
        platform: sagellm platform name (``cpu``, ``cuda``, ``ascend``, ``camb``, ``maca``, ``kunlun``).
        lmdeploy_device_type: ``PytorchEngineConfig.device_type`` to pass, None when LMDeploy
            0.11 has no backend for the platform.
        dlinfer_vendor: the dlinfer build LMDeploy's backend needs (``"ascend"``...), None if none.
        device_count: devices visible to this process (0 when absent).
        device_memory_bytes: total memory of each device, in bytes.
        device_names: one name per device.
        dtypes: dtype names the platform runs.
        kv_quant_policies: ``quant_policy`` values LMDeploy 0.11 accepts on this device type.
        collective_backend: collective library (``nccl``, ``hccl``, ``cncl``, ``gloo``...).
        dist_backend: backend string for ``torch.distributed.init_process_group``, None if unknown.
        interconnect: device-to-device link, None if unknown or single device.
        required_block_size: KV block size LMDeploy forces on this device type, None if free.
        capabilities: extra facts from detection.
        usable: whether sagellm can run the LMDeploy engine on it.
        reason: why not, when ``usable`` is False; None when usable.
    """

    platform: str
    lmdeploy_device_type: str | None
    dlinfer_vendor: str | None
    device_count: int
    device_memory_bytes: tuple[int, ...]
    device_names: tuple[str, ...]
    dtypes: tuple[str, ...]
    kv_quant_policies: tuple[int, ...]
    collective_backend: str | None
    dist_backend: str | None
    interconnect: str | None
    required_block_size: int | None
    capabilities: Mapping[str, CapabilityValue] = field(hash=False)
    usable: bool
    reason: str | None

    def __post_init__(self) -> None:
        if self.usable and self.reason is not None:
            raise ValueError("a usable descriptor carries no reason")
        if not self.usable and not self.reason:
            raise ValueError("an unusable descriptor needs a reason")
        object.__setattr__(self, "capabilities", _frozen_mapping(self.capabilities))

    @property
    def total_memory_bytes(self) -> int:
        """Sum of the devices' memory."""
        return sum(self.device_memory_bytes)

    def supports_kv_quant(self, policy: int) -> bool:
        """Whether LMDeploy 0.11 accepts ``quant_policy=policy`` on this device type."""
        return policy in self.kv_quant_policies

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists, capabilities a plain dict)."""
        return {
            "platform": self.platform,
            "lmdeploy_device_type": self.lmdeploy_device_type,
            "dlinfer_vendor": self.dlinfer_vendor,
            "device_count": self.device_count,
            "device_memory_bytes": list(self.device_memory_bytes),
            "device_names": list(self.device_names),
            "dtypes": list(self.dtypes),
            "kv_quant_policies": list(self.kv_quant_policies),
            "collective_backend": self.collective_backend,
            "dist_backend": self.dist_backend,
            "interconnect": self.interconnect,
            "required_block_size": self.required_block_size,
            "capabilities": dict(self.capabilities),
            "usable": self.usable,
            "reason": self.reason,
        }


class PlatformUnavailableError(RuntimeError):
    """An explicitly requested platform is known but cannot run the engine here."""

    def __init__(self, descriptor: AcceleratorDescriptor, message: str) -> None:
        super().__init__(message)
        self.descriptor = descriptor


class UnknownPlatformError(UnknownNameError):
    """A requested platform name is not registered (a ``KeyError`` and a ``ValueError``)."""
