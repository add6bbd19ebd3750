"""``CapabilityDescriptor``: what one device (kind) can do, for matching configs to hardware."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sagellm.core.kv import KV_DTYPE_BITS
from sagellm.core.quant import QuantizationProfile
from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import (
    check_choice,
    check_positive_int,
    check_str,
    coerce_frozenset,
    invalid,
)

#: Device kinds, spelled as LMDeploy's ``device_type`` (plus our ``cpu``).
DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda", "ascend", "camb", "maca", "kunlun")
#: Device-to-device links. ``none``: single device; ``unknown``: not probed.
INTERCONNECTS: tuple[str, ...] = ("none", "unknown", "pcie", "nvlink", "hccs", "mlu_link", "xgmi", "xpu_link")
#: LMDeploy 0.11 ``quant_policy`` values.
KV_QUANT_POLICIES: tuple[int, ...] = (0, 4, 8)
#: Feature names used across sagellm (not enforced: any lowercase identifier is accepted).
KNOWN_FEATURES: tuple[str, ...] = (
    "paged_attention",
    "cuda_graph",
    "prefix_caching",
    "kv_offload",
    "flash_attention",
    "speculative_decoding",
    "tensor_parallel",
)
_FEATURE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class CapabilityDescriptor(SerializableMixin):
    """Capabilities of one device kind as seen by sagellm.

    Attributes:
        device_kind: one of ``DEVICE_KINDS``.
        dtypes: element dtype names the device computes in (subset of ``KV_DTYPE_BITS``).
        kv_quant_policies: LMDeploy ``quant_policy`` values the device supports (subset of 0, 4, 8).
        max_memory_bytes: usable memory of one device, in bytes.
        interconnect: link between devices, one of ``INTERCONNECTS``.
        features: feature names, lowercase identifiers (see ``KNOWN_FEATURES``).
        device_name: marketing/driver name, informational ("" when unknown).
        num_devices: devices of this kind visible to the process.
    """

    device_kind: str
    max_memory_bytes: int
    dtypes: frozenset[str] = frozenset({"float32"})
    kv_quant_policies: frozenset[int] = frozenset({0})
    interconnect: str = "none"
    features: frozenset[str] = field(default_factory=frozenset)
    device_name: str = ""
    num_devices: int = 1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "device_kind", self.device_kind, DEVICE_KINDS)
        check_positive_int(owner, "max_memory_bytes", self.max_memory_bytes)
        dtypes = coerce_frozenset(owner, "dtypes", self.dtypes, str, "dtype names")
        bad = sorted(d for d in dtypes if d not in KV_DTYPE_BITS)
        if bad or not dtypes:
            raise invalid(owner, "dtypes", sorted(dtypes), "a non-empty subset of " + ", ".join(KV_DTYPE_BITS))
        object.__setattr__(self, "dtypes", dtypes)
        policies = coerce_frozenset(owner, "kv_quant_policies", self.kv_quant_policies, int, "integers")
        if not policies or not policies <= set(KV_QUANT_POLICIES):
            raise invalid(owner, "kv_quant_policies", sorted(policies), "a non-empty subset of 0, 4, 8")
        object.__setattr__(self, "kv_quant_policies", policies)
        check_choice(owner, "interconnect", self.interconnect, INTERCONNECTS)
        features = coerce_frozenset(owner, "features", self.features, str, "feature names")
        for feature in sorted(features):
            if not _FEATURE_RE.match(feature):
                raise invalid(owner, "features", feature, "lowercase identifiers such as " + ", ".join(KNOWN_FEATURES))
        object.__setattr__(self, "features", features)
        check_str(owner, "device_name", self.device_name, allow_empty=True)
        check_positive_int(owner, "num_devices", self.num_devices)

    def supports_dtype(self, dtype: str) -> bool:
        return dtype in self.dtypes

    def has_feature(self, feature: str) -> bool:
        return feature in self.features

    def supports_quantization(self, profile: QuantizationProfile) -> bool:
        """True when the profile's KV quantization maps to a policy this device supports.

        Profiles with no LMDeploy 0.11 policy on this device kind (fp8 KV off the cpu) are unsupported.
        """
        try:
            policy = profile.lmdeploy_quant_policy(self.device_kind)
        except ValueError:
            return False
        return policy in self.kv_quant_policies
