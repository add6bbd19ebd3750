"""Quantized paged KV blocks: LMDeploy 0.11 ``quant_policy`` 8 (int8, fp8) and 4 (int4).

Layout (what LMDeploy's ``CacheEngine`` allocates when ``quant_policy`` is 4 or 8; the element
type of policy 8 is the device spec's ``extra['kv_quant_dtype']``, default uint8)::

    k_cache, v_cache:                 [num_blocks, block_size, num_kv_heads, head_dim]       uint8  (int8)
                                      [num_blocks, block_size, num_kv_heads, head_dim]       float8 (fp8_*)
                                      [num_blocks, block_size, num_kv_heads, head_dim // 2]  uint8  (int4)
    k_scales_zeros, v_scales_zeros:   [num_blocks, block_size, num_kv_heads, 2]  model dtype; [..., 0] = scale,
                                                                                  [..., 1] = zero

Each token's K (and V) vector of each KV head is quantized on its own:

* int8 / int4: asymmetric min/max (:mod:`sagellm.accel.quantization.integer`),
  ``value = (code - zero) * scale``. int4 codes of one vector are packed two per byte,
  element ``j`` in the low nibble and element ``j + head_dim / 2`` in the high nibble of byte ``j``;
* fp8_e4m3 / fp8_e5m2: symmetric (:mod:`sagellm.accel.quantization.fp8`),
  ``scale = amax / finfo(fp8).max`` (1 when amax is 0), ``value = float(data) * scale``;
  the zero slot holds 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sagellm.accel.quantization.fp8 import FP8_DTYPES, dequantize_fp8, fp8_scale_from_amax, quantize_fp8
from sagellm.accel.quantization.integer import dequantize_grid, pack_int4, quantize_rows, unpack_int4


@dataclass(frozen=True)
class KVFormat:
    """One quantized KV element format as LMDeploy 0.11's cache engine stores it.

    Attributes:
        name: the ``QuantizationProfile.kv_dtype`` spelling (``int8``, ``int4``, ``fp8_e4m3``, ``fp8_e5m2``).
        quant_policy: LMDeploy ``quant_policy`` that allocates it.
        storage_dtype: element type of the K/V cache tensors.
    """

    name: str
    quant_policy: int
    storage_dtype: torch.dtype

    @property
    def is_fp8(self) -> bool:
        return self.name in FP8_DTYPES


#: Quantized KV formats, by ``kv_dtype`` name.
KV_FORMATS: dict[str, KVFormat] = {
    f.name: f
    for f in (
        KVFormat("int8", 8, torch.uint8),
        KVFormat("int4", 4, torch.uint8),
        *(KVFormat(name, 8, dtype) for name, dtype in FP8_DTYPES.items()),
    )
}
#: LMDeploy ``quant_policy`` -> bits per KV element.
QUANT_POLICY_BITS: dict[int, int] = {8: 8, 4: 4}


def kv_format(name: str) -> KVFormat:
    if name not in KV_FORMATS:
        raise ValueError(f"kv_format: name got {name!r}; accepted: one of {', '.join(map(repr, KV_FORMATS))}")
    return KV_FORMATS[name]


def kv_format_of(quant_policy: int, cache_dtype: torch.dtype) -> KVFormat:
    """The format a ``quant_policy`` cache of element type ``cache_dtype`` holds.

    Raises:
        ValueError: for a pair no format matches (e.g. a float8 cache under policy 4).
    """
    for fmt in KV_FORMATS.values():
        if fmt.quant_policy == quant_policy and fmt.storage_dtype == cache_dtype:
            return fmt
    accepted = ", ".join(f"({f.quant_policy}, {f.storage_dtype}) = {f.name}" for f in KV_FORMATS.values())
    raise ValueError(
        f"quantized KV cache: got quant_policy {quant_policy!r} with cache dtype {cache_dtype}; "
        f"accepted (quant_policy, cache dtype): {accepted} -- the cache dtype comes from the cpu device's "
        "kv_quant_dtype (sagellm.engines.lmdeploy.cpu.device.set_kv_quant_storage, or SAGELLM_KV_DTYPE)"
    )


@dataclass(frozen=True)
class KVQuant:
    """The scale/zero companions of a quantized paged KV cache, one pair of tensors per layer.

    Attributes:
        quant_policy: 8 (int8 or fp8) or 4 (int4, two codes per byte).
        k_scales_zeros, v_scales_zeros: ``[num_blocks, block_size, num_kv_heads, 2]`` (scale, zero).
        cache_dtype: element type of the K/V caches; with ``quant_policy`` it names the format
            (uint8 is what LMDeploy allocates unless the device spec says otherwise).
    """

    quant_policy: int
    k_scales_zeros: torch.Tensor
    v_scales_zeros: torch.Tensor
    cache_dtype: torch.dtype = torch.uint8

    def __post_init__(self) -> None:
        if self.quant_policy not in QUANT_POLICY_BITS:
            raise ValueError(
                f"KVQuant.quant_policy: got {self.quant_policy!r}; accepted: one of "
                f"{', '.join(map(str, QUANT_POLICY_BITS))} (0 means no KVQuant at all)"
            )
        kv_format_of(self.quant_policy, self.cache_dtype)
        for name in ("k_scales_zeros", "v_scales_zeros"):
            tensor = getattr(self, name)
            if tensor.dim() != 4 or tensor.size(-1) != 2:
                raise ValueError(
                    f"KVQuant.{name}: got shape {tuple(tensor.shape)}; "
                    "accepted: [num_blocks, block_size, num_kv_heads, 2]"
                )

    @property
    def bits(self) -> int:
        return QUANT_POLICY_BITS[self.quant_policy]

    @property
    def kv_dtype(self) -> str:
        """The format's name: ``int8``, ``int4``, ``fp8_e4m3`` or ``fp8_e5m2``."""
        return kv_format_of(self.quant_policy, self.cache_dtype).name


def quantize_kv(states: torch.Tensor, kv_dtype: str, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``[tokens, kv_heads, dim]`` into (cache rows, scales/zeros).

    Returns:
        ``[tokens, kv_heads, dim]`` uint8 codes (int8) or float8 data (fp8_*), or
        ``[tokens, kv_heads, dim // 2]`` packed uint8 (int4); and ``[tokens, kv_heads, 2]``
        (scale, zero) in ``scale_dtype``.
    """
    fmt = kv_format(kv_dtype)
    if fmt.is_fp8:
        scale = fp8_scale_from_amax(states.abs().amax(dim=-1), fmt.name, scale_dtype)
        data = quantize_fp8(states, scale[..., None], fmt.name)
        return data, torch.stack([scale, torch.zeros_like(scale)], dim=-1)
    codes, scale, zero = quantize_rows(states, QUANT_POLICY_BITS[fmt.quant_policy], scale_dtype)
    if fmt.name == "int4":
        codes = pack_int4(codes)
    return codes, torch.stack([scale, zero], dim=-1)


def dequantize_kv(
    codes: torch.Tensor, scales_zeros: torch.Tensor, kv_dtype: str, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of :func:`quantize_kv` for any leading shape: ``[..., dim (/2)]`` + ``[..., 2]`` -> ``[..., dim]``."""
    fmt = kv_format(kv_dtype)
    if fmt.is_fp8:
        return dequantize_fp8(codes, scales_zeros[..., 0:1], dtype)
    if fmt.name == "int4":
        codes = unpack_int4(codes)
    return dequantize_grid(codes, scales_zeros[..., 0:1], scales_zeros[..., 1:2], dtype)
