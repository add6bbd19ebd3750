"""Quantized paged KV blocks, LMDeploy 0.11 ``quant_policy`` 8 (int8) and 4 (int4).

Layout (what LMDeploy's ``CacheEngine`` allocates when ``quant_policy`` is 4 or 8)::

    k_cache, v_cache:                 [num_blocks, block_size, num_kv_heads, head_dim]       uint8  (policy 8)
                                      [num_blocks, block_size, num_kv_heads, head_dim // 2]  uint8  (policy 4)
    k_scales_zeros, v_scales_zeros:   [num_blocks, block_size, num_kv_heads, 2]  model dtype; [..., 0] = scale,
                                                                                  [..., 1] = zero

Each token's K (and V) vector of each KV head is quantized on its own (asymmetric min/max,
see :mod:`sagellm.accel.quantization.integer`), and ``value = (code - zero) * scale``. int4
codes of one vector are packed two per byte, element ``j`` in the low nibble and element
``j + head_dim / 2`` in the high nibble of byte ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sagellm.accel.quantization.integer import dequantize_grid, pack_int4, quantize_rows, unpack_int4

#: LMDeploy ``quant_policy`` -> bits per KV element.
QUANT_POLICY_BITS: dict[int, int] = {8: 8, 4: 4}


@dataclass(frozen=True)
class KVQuant:
    """The scale/zero companions of a quantized paged KV cache, one pair of tensors per layer.

    Attributes:
        quant_policy: 8 (int8) or 4 (int4, two codes per byte).
        k_scales_zeros, v_scales_zeros: ``[num_blocks, block_size, num_kv_heads, 2]`` (scale, zero).
    """

    quant_policy: int
    k_scales_zeros: torch.Tensor
    v_scales_zeros: torch.Tensor

    def __post_init__(self) -> None:
        if self.quant_policy not in QUANT_POLICY_BITS:
            raise ValueError(
                f"KVQuant.quant_policy: got {self.quant_policy!r}; accepted: one of "
                f"{', '.join(map(str, QUANT_POLICY_BITS))} (0 means no KVQuant at all)"
            )
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


def quantize_kv(states: torch.Tensor, bits: int, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``[tokens, kv_heads, dim]`` into (cache rows, scales/zeros).

    Returns:
        uint8 ``[tokens, kv_heads, dim]`` (int8) or ``[tokens, kv_heads, dim // 2]`` (int4, packed),
        and ``[tokens, kv_heads, 2]`` (scale, zero) in ``scale_dtype``.
    """
    codes, scale, zero = quantize_rows(states, bits, scale_dtype)
    if bits == 4:
        codes = pack_int4(codes)
    return codes, torch.stack([scale, zero], dim=-1)


def dequantize_kv(
    codes: torch.Tensor, scales_zeros: torch.Tensor, bits: int, dtype: torch.dtype
) -> torch.Tensor:
    """Inverse of :func:`quantize_kv` for any leading shape: ``[..., dim (/2)]`` + ``[..., 2]`` -> ``[..., dim]``."""
    if bits == 4:
        codes = unpack_int4(codes)
    return dequantize_grid(codes, scales_zeros[..., 0:1], scales_zeros[..., 1:2], dtype)
