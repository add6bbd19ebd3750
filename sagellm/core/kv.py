"""KV-cache geometry (``KVCacheSchema``) and the names of KV tiers.

Byte arithmetic, per token and per layer (``H`` = num_kv_heads, ``D`` = head_dim,
``Dv`` = value head dim, ``b`` = bits per element of ``dtype``)::

    K data        H * D  * b / 8
    V data        H * Dv * b / 8
    scale + zero  2 (K and V) * H * 2 (scale, zero) * bytes(scale_dtype)   only for int8 / int4

    bytes_per_token() = num_layers * (K data + V data + scale + zero)
    bytes_per_block() = bytes_per_token() * block_size

This is how LMDeploy 0.11's PyTorch ``CacheEngine`` lays quantized KV out with
``quant_policy`` 4/8: data in uint8 (int4 packs two elements per byte along the
head dim) plus one ``(..., num_kv_heads, 2)`` scale/zero tensor each for K and V,
stored in the model's float dtype -- hence ``scale_dtype`` should be the model
dtype. fp8 dtypes carry no per-token scale/zero in this schema (their scales,
when used, are per-layer constants and are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_choice, check_int, check_positive_int, check_power_of_two, invalid

#: Bits per element of every KV dtype name sagellm knows.
KV_DTYPE_BITS: dict[str, int] = {
    "float32": 32,
    "float16": 16,
    "bfloat16": 16,
    "fp8_e4m3": 8,
    "fp8_e5m2": 8,
    "int8": 8,
    "int4": 4,
}
#: KV dtypes stored with a per-token, per-head scale and zero point.
SCALED_KV_DTYPES: frozenset[str] = frozenset({"int8", "int4"})
#: Dtypes a scale/zero may be stored in.
SCALE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
#: Known physical layouts. ``lmdeploy_paged``: per layer, K and V tensors shaped
#: ``[num_blocks, block_size, num_kv_heads, head_dim]``; ``contiguous``: one
#: ``[num_tokens, num_kv_heads, head_dim]`` run per request (staging/transfer).
KV_LAYOUTS: tuple[str, ...] = ("lmdeploy_paged", "contiguous")


class KVTier(str, Enum):
    """Where a KV block lives. ``DEVICE`` is the accelerator (or CPU device) pool."""

    DEVICE = "device"
    HOST = "host"
    SSD = "ssd"
    REMOTE = "remote"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class KVCacheSchema(SerializableMixin):
    """Shape and element type of a model's KV cache; answers "how many bytes per token/block".

    Attributes:
        num_layers: attention layers that hold KV.
        num_kv_heads: KV heads per layer on this rank (after tensor-parallel split).
        head_dim: key head dimension.
        block_size: tokens per block; a power of two.
        dtype: element type name, one of ``KV_DTYPE_BITS``.
        layout: physical layout name, one of ``KV_LAYOUTS``.
        v_head_dim: value head dimension when it differs from ``head_dim`` (MLA); None = same.
        scale_dtype: dtype of the per-token-per-head scale and zero for int8/int4
            (LMDeploy uses the model dtype); ignored for other dtypes.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int = 64
    dtype: str = "float16"
    layout: str = "lmdeploy_paged"
    v_head_dim: int | None = None
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_positive_int(owner, "num_layers", self.num_layers)
        check_positive_int(owner, "num_kv_heads", self.num_kv_heads)
        check_positive_int(owner, "head_dim", self.head_dim)
        check_power_of_two(owner, "block_size", self.block_size)
        check_choice(owner, "dtype", self.dtype, tuple(KV_DTYPE_BITS))
        check_choice(owner, "layout", self.layout, KV_LAYOUTS)
        if self.v_head_dim is not None:
            check_positive_int(owner, "v_head_dim", self.v_head_dim)
        check_choice(owner, "scale_dtype", self.scale_dtype, SCALE_DTYPES)
        if self.dtype == "int4":
            for name in ("head_dim", "v_head_dim"):
                value = getattr(self, name)
                if value is not None and value % 2:
                    raise invalid(owner, name, value, "an even number when dtype is 'int4' (two elements per byte)")

    @property
    def value_head_dim(self) -> int:
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def is_scaled(self) -> bool:
        """True when blocks carry per-token-per-head scale/zero (int8, int4)."""
        return self.dtype in SCALED_KV_DTYPES

    def bytes_per_token_per_layer(self) -> int:
        bits = KV_DTYPE_BITS[self.dtype]
        data_bits = self.num_kv_heads * (self.head_dim + self.value_head_dim) * bits
        total = data_bits // 8
        if self.is_scaled:
            total += 2 * self.num_kv_heads * 2 * (KV_DTYPE_BITS[self.scale_dtype] // 8)
        return total

    def bytes_per_token(self) -> int:
        """K + V (+ scale/zero) bytes of one token across all layers."""
        return self.num_layers * self.bytes_per_token_per_layer()

    def bytes_per_block(self) -> int:
        """K + V (+ scale/zero) bytes of one block across all layers."""
        return self.bytes_per_token() * self.block_size

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens (ceil division)."""
        check_int(type(self).__name__, "num_tokens", num_tokens, minimum=0)
        return -(-num_tokens // self.block_size)

    def blocks_in(self, num_bytes: int) -> int:
        """Whole blocks that fit in ``num_bytes`` bytes."""
        check_int(type(self).__name__, "num_bytes", num_bytes, minimum=0)
        return num_bytes // self.bytes_per_block()
