"""``QuantizationProfile``: which KV and weight quantization a deployment asks for."""

from __future__ import annotations

from dataclasses import dataclass

from sagellm.core.kv import KV_DTYPE_BITS, SCALE_DTYPES, KVCacheSchema
from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_choice, check_group_size

#: KV cache dtypes a profile may request; ``auto`` keeps the model dtype.
KV_QUANT_DTYPES: tuple[str, ...] = ("auto", "int8", "int4", "fp8_e4m3", "fp8_e5m2")
#: Weight formats: ``awq_int4``/``gptq_int4`` (4-bit weights, grouped), ``w8a16``
#: (int8 weights, float activations), ``w8a8`` (int8 weights and activations,
#: SmoothQuant style), ``fp8`` (fp8 weights).
WEIGHT_FORMATS: tuple[str, ...] = ("none", "awq_int4", "gptq_int4", "w8a16", "w8a8", "fp8")
#: How KV scales are shared: one per token per head (what LMDeploy's online KV
#: quantization does), one per channel, or one per ``group_size`` elements.
KV_GRANULARITIES: tuple[str, ...] = ("per_token_head", "per_channel", "per_group")

#: ``kv_dtype`` -> LMDeploy 0.11 ``quant_policy``. fp8 rides on policy 8 with float8 storage, which
#: only sagellm's cpu kernels read (LMDeploy 0.11's own kernels have no fp8 KV; 0.14 adds it).
_LMDEPLOY_QUANT_POLICY: dict[str, int] = {"auto": 0, "int4": 4, "int8": 8, "fp8_e4m3": 8, "fp8_e5m2": 8}
#: KV dtypes served only on some devices -> those devices.
KV_DTYPE_DEVICES: dict[str, tuple[str, ...]] = {"fp8_e4m3": ("cpu",), "fp8_e5m2": ("cpu",)}


def check_kv_dtype_on_device(owner: str, kv_dtype: str, device_type: str) -> None:
    """Raise when ``kv_dtype`` is one of ``KV_DTYPE_DEVICES`` and ``device_type`` is not among its devices."""
    devices = KV_DTYPE_DEVICES.get(kv_dtype)
    if devices is None or device_type in devices:
        return
    accepted = [name for name in KV_QUANT_DTYPES if device_type in KV_DTYPE_DEVICES.get(name, (device_type,))]
    raise ValueError(
        f"{owner}.kv_dtype: got {kv_dtype!r} on device {device_type!r}; LMDeploy 0.11 has no fp8 KV cache there "
        f"(sagellm's kernels serve it on {', '.join(map(repr, devices))} only); "
        f"accepted on {device_type!r}: {', '.join(map(repr, accepted))}"
    )


@dataclass(frozen=True)
class QuantizationProfile(SerializableMixin):
    """Requested quantization of the KV cache and the weights.

    Attributes:
        kv_dtype: KV element type, one of ``KV_QUANT_DTYPES``; ``auto`` = model dtype.
        weight_format: one of ``WEIGHT_FORMATS``; the checkpoint must already be in it.
        granularity: KV scale granularity, one of ``KV_GRANULARITIES``.
        group_size: elements per scale group; required (a power of two) when
            ``granularity`` is ``per_group`` and must be None otherwise.
    """

    kv_dtype: str = "auto"
    weight_format: str = "none"
    granularity: str = "per_token_head"
    group_size: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "kv_dtype", self.kv_dtype, KV_QUANT_DTYPES)
        check_choice(owner, "weight_format", self.weight_format, WEIGHT_FORMATS)
        check_choice(owner, "granularity", self.granularity, KV_GRANULARITIES)
        check_group_size(owner, self.granularity, self.group_size)

    @property
    def is_kv_quantized(self) -> bool:
        return self.kv_dtype != "auto"

    def kv_cache_dtype(self, model_dtype: str) -> str:
        """The KV dtype name to put in a ``KVCacheSchema`` for a model of ``model_dtype``."""
        if self.kv_dtype != "auto":
            return self.kv_dtype
        check_choice("QuantizationProfile.kv_cache_dtype", "model_dtype", model_dtype, tuple(KV_DTYPE_BITS))
        return model_dtype

    def kv_cache_schema(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        model_dtype: str,
        block_size: int = 64,
        v_head_dim: int | None = None,
    ) -> KVCacheSchema:
        """The ``KVCacheSchema`` this profile gives a model: KV dtype from ``kv_cache_dtype``,
        scales stored in the model dtype (as LMDeploy does; float32 if the model dtype is not a float)."""
        return KVCacheSchema(
            num_layers=num_layers,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            block_size=block_size,
            dtype=self.kv_cache_dtype(model_dtype),
            v_head_dim=v_head_dim,
            scale_dtype=model_dtype if model_dtype in SCALE_DTYPES else "float32",
        )

    def lmdeploy_quant_policy(self, device_type: str) -> int:
        """LMDeploy 0.11's ``quant_policy`` on ``device_type``: 0 (none), 4 (int4 KV) or 8 (int8 or fp8 KV).

        Args:
            device_type: LMDeploy's ``device_type`` (``cpu``, ``cuda``, ``ascend``...): fp8 KV exists
                only on ``cpu``, where sagellm's kernels store it as policy 8 in float8.

        Raises:
            ValueError: for fp8 KV on a device other than ``cpu``, and for int4/int8/fp8 with a
                granularity other than ``per_token_head`` (0.11 quantizes per token per head).
        """
        check_kv_dtype_on_device(type(self).__name__, self.kv_dtype, device_type)
        if self.kv_dtype != "auto" and self.granularity != "per_token_head":
            raise ValueError(
                f"QuantizationProfile.granularity: {self.granularity!r} is not supported by LMDeploy 0.11 "
                f"KV quantization; accepted: 'per_token_head'"
            )
        return _LMDEPLOY_QUANT_POLICY[self.kv_dtype]
