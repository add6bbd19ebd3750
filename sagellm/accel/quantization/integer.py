"""Asymmetric integer grids (int8, int4) with LMDeploy's KV semantics, and int4 packing.

One quantized element ``q`` (an unsigned integer on ``0 .. qmax``, ``qmax = 2**bits - 1``)
stands for the real value ``(q - zero) * scale``. ``scale`` and ``zero`` come from the
minimum and maximum of the elements that share them::

    scale = (max - min) / qmax          zero = -min / scale        (zero is a float, not rounded)
    q     = floor(x / scale + zero + 0.5), clamped to 0 .. qmax

This is what LMDeploy 0.11's CUDA fill kernel stores for ``quant_policy`` 8 and 4, one
``(scale, zero)`` pair per token per KV head. Two deliberate differences, both invisible to a
reader that decodes ``(q - zero) * scale``:

* statistics are taken in float32 and ``q`` is computed against the scale and zero *as
  stored* (after rounding to the storage dtype), so a decoder sees the grid the encoder used;
* a constant run (``max == min``) gets ``scale = 1`` instead of a division by zero, and
  decodes exactly to the constant.

Error bound (exact arithmetic, float32 scale/zero): ``|x - (q - zero) * scale| <= scale / 2``.

int4 packing follows LMDeploy's nibble order: along the last axis of length ``D`` (even),
byte ``j`` holds element ``j`` in its low nibble and element ``j + D/2`` in its high nibble::

    elements  e0 e1 ... e(D/2-1) | e(D/2) ... e(D-1)
    byte j  = e_j  |  e_(j + D/2) << 4
"""

from __future__ import annotations

import torch

#: Bits of each integer KV/weight format.
INT_BITS: dict[str, int] = {"int8": 8, "int4": 4}


def grid_max(bits: int) -> int:
    """Largest code of an unsigned ``bits``-bit grid (255 for int8, 15 for int4)."""
    if bits not in (4, 8):
        raise ValueError(f"grid_max: bits got {bits!r}; accepted: 4 or 8")
    return (1 << bits) - 1


def scale_zero_from_range(
    x_min: torch.Tensor,
    x_max: torch.Tensor,
    bits: int,
    storage_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of the asymmetric grid covering ``[x_min, x_max]``, rounded to ``storage_dtype``.

    Args:
        x_min, x_max: per-group minimum and maximum (any float dtype, same shape).
        bits: 8 or 4.
        storage_dtype: dtype the caller stores scale and zero in (LMDeploy: the model dtype).
    """
    qmax = grid_max(bits)
    x_min = x_min.float()
    span = x_max.float() - x_min
    scale = torch.where(span > 0, span / qmax, torch.ones_like(span))
    zero = -x_min / scale
    return scale.to(storage_dtype), zero.to(storage_dtype)


def quantize_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``floor(x / scale + zero + 0.5)`` clamped to ``0 .. qmax``, as uint8 (one code per byte).

    ``scale`` and ``zero`` broadcast against ``x``; they are used as given (already rounded
    to their storage dtype), in float32 unless ``x`` is float64.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    codes = torch.floor(x.to(compute) / scale.to(compute) + zero.to(compute) + 0.5)
    return codes.clamp_(0, grid_max(bits)).to(torch.uint8)


def dequantize_grid(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``(codes - zero) * scale`` in ``dtype`` (computed in float32, or float64 when ``dtype`` is)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return ((codes.to(compute) - zero.to(compute)) * scale.to(compute)).to(dtype)


def quantize_rows(
    x: torch.Tensor, bits: int, storage_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LMDeploy's per-token-per-head KV quantization: one ``(scale, zero)`` per vector along the last axis.

    Args:
        x: ``[..., D]`` (for KV: ``[tokens, kv_heads, head_dim]``).
        bits: 8 or 4.
        storage_dtype: dtype of the returned scale and zero.

    Returns:
        ``(codes, scale, zero)``: codes ``[..., D]`` uint8 (unpacked, one per byte),
        scale and zero ``[...]`` in ``storage_dtype``.
    """
    scale, zero = scale_zero_from_range(x.amin(dim=-1), x.amax(dim=-1), bits, storage_dtype)
    codes = quantize_to_grid(x, scale[..., None], zero[..., None], bits)
    return codes, scale, zero


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes (uint8 on 0..15) two per byte along the last axis, LMDeploy's nibble order.

    ``[..., D]`` -> ``[..., D // 2]``; byte ``j`` = ``codes[..., j] | codes[..., j + D // 2] << 4``.
    """
    if codes.dtype != torch.uint8:
        raise ValueError(f"pack_int4: codes dtype got {codes.dtype}; accepted: torch.uint8")
    dim = codes.size(-1)
    if dim % 2:
        raise ValueError(f"pack_int4: last axis got {dim}; accepted: an even length (two codes per byte)")
    half = dim // 2
    return codes[..., :half] | (codes[..., half:] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``[..., D // 2]`` uint8 -> ``[..., D]`` codes on 0..15."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4: packed dtype got {packed.dtype}; accepted: torch.uint8")
    return torch.cat([packed & 0x0F, packed >> 4], dim=-1)
