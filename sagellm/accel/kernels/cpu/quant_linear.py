"""Weight-only quantized linear layers on the CPU: group-wise W4/W8 (AWQ) and per-channel W8.

Two kernels, chosen per layer when the weights are prepared:

* ``int4pack`` -- torch's CPU int4 GEMM (``aten._weight_int4pack_mm_for_cpu``) for 4-bit group-wise
  weights when the shape allows it (``out % 16 == 0``, ``group_size`` in 32/64/128/256). It reads
  ``w = (q - 8) * scale + offset`` per group, so an AWQ group ``(q - zero) * scale`` becomes
  ``offset = (8 - zero) * scale``; scale and offset are bfloat16 and the activations are rounded
  to bfloat16 for the product (the result comes back in the input dtype);
* ``int8pack`` -- torch's CPU int8 GEMM (``aten._weight_int8pack_mm``) for per-channel symmetric
  int8 weights with ``in % 16 == 0`` (torch 2.13 returns garbage or crashes for other widths):
  bfloat16 activations and product, the float32 channel scale applied afterwards;
* ``dequant`` -- the reference path for every other case (8-bit AWQ, shapes the packed kernels reject):
  the codes stay uint8 in memory and each call dequantizes them to float32 and multiplies in
  float32.

On this project's 2-core AVX-512 machine the packed kernels beat a float32 ``F.linear`` at decode
sizes (1-4 rows) and roughly match it at 64 rows; ``dequant`` is several times slower than float
(see ``sagellm/accel/README.md``).

Error bound of the packed kernels against the exact product with the dequantized weight
(float64): ``|y - x @ w_hat.T| <= 2^-7 * (|x| @ (|w_hat| + |q - 8| * scale + |offset|).T)`` per
output element -- bfloat16 rounding of the activations, of the scale/offset and of the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sagellm.accel.quantization.weights import GroupQuantized

#: Group sizes torch's CPU int4 kernel accepts.
INT4PACK_GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)
#: Kernel names (see the module docstring).
W4_KERNELS: tuple[str, ...] = ("int4pack", "dequant")


def _int4pack_available() -> bool:
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def _int8pack_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def group_kernel_for(bits: int, out_features: int, in_features: int, group_size: int) -> str:
    """The kernel :func:`prepare_group_weight` picks for a group-wise weight of this shape."""
    if (
        bits == 4
        and _int4pack_available()
        and out_features % 16 == 0
        and in_features % 2 == 0
        and group_size in INT4PACK_GROUP_SIZES
    ):
        return "int4pack"
    return "dequant"


@dataclass(frozen=True)
class GroupWeight:
    """A group-wise quantized weight prepared for :func:`linear_group`.

    Attributes:
        kernel: ``int4pack`` or ``dequant``.
        weight: int4pack: torch's packed uint8 layout; dequant: uint8 codes ``[out, in]``.
        scales: int4pack: bfloat16 ``[in / group, out, 2]`` (scale, offset); dequant: float32 ``[out, in / group]``.
        zeros: dequant: float32 zero points ``[out, in / group]``; int4pack: an empty tensor.
        bits, group_size, out_features, in_features: the layer's format and shape.
    """

    kernel: str
    weight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    out_features: int
    in_features: int


def prepare_group_weight(quantized: GroupQuantized, kernel: str | None = None) -> GroupWeight:
    """Lay ``quantized`` out for the CPU kernel (``kernel`` None: :func:`group_kernel_for`)."""
    out_features, in_features = quantized.shape
    chosen = group_kernel_for(quantized.bits, out_features, in_features, quantized.group_size)
    if kernel is None:
        kernel = chosen
    elif kernel not in W4_KERNELS or (kernel == "int4pack" and chosen != "int4pack"):
        raise ValueError(
            f"prepare_group_weight: kernel {kernel!r} cannot run a {quantized.bits}-bit [{out_features}, "
            f"{in_features}] weight with group_size {quantized.group_size}; accepted here: {chosen!r}"
            + (" or 'dequant'" if chosen != "dequant" else "")
        )
    common = dict(bits=quantized.bits, group_size=quantized.group_size, out_features=out_features,
                  in_features=in_features)
    if kernel == "int4pack":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(quantized.codes.to(torch.int32).contiguous(), 1)
        scale = quantized.scales.float()
        offset = (8.0 - quantized.zeros.float()) * scale
        scales_offsets = torch.stack([scale, offset], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        return GroupWeight("int4pack", packed, scales_offsets, torch.empty(0), **common)
    return GroupWeight("dequant", quantized.codes.contiguous(), quantized.scales.float().contiguous(),
                       quantized.zeros.float().contiguous(), **common)


def _dequantized(weight: GroupWeight) -> torch.Tensor:
    codes = weight.weight.float().unflatten(1, (-1, weight.group_size))
    return ((codes - weight.zeros[..., None]) * weight.scales[..., None]).flatten(1)


def linear_group(x: torch.Tensor, weight: GroupWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w_hat.T + bias`` for a group-wise weight; ``x`` ``[..., in]`` in any float dtype, result in ``x.dtype``."""
    if x.size(-1) != weight.in_features:
        raise ValueError(f"linear_group: input has {x.size(-1)} features; the weight expects {weight.in_features}")
    rows = x.reshape(-1, weight.in_features)
    if weight.kernel == "int4pack":
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16), weight.weight, weight.group_size, weight.scales
        )
    else:
        out = rows.float() @ _dequantized(weight).t()
    out = out.to(x.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], weight.out_features)


@dataclass(frozen=True)
class ChannelInt8Weight:
    """A per-output-channel symmetric int8 weight: int8 ``codes [out, in]``, float32 ``scale [out]``."""

    codes: torch.Tensor
    scale: torch.Tensor
    kernel: str

    @property
    def out_features(self) -> int:
        return self.codes.size(0)

    @property
    def in_features(self) -> int:
        return self.codes.size(1)


def prepare_channel_int8(codes: torch.Tensor, scale: torch.Tensor) -> ChannelInt8Weight:
    """Check and lay out an int8 ``[out, in]`` weight with its ``[out]`` or ``[out, 1]`` scale."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"prepare_channel_int8: got a {codes.dim()}-d {codes.dtype} weight; accepted: int8 [out, in]")
    flat = scale.reshape(-1)
    if flat.numel() != codes.size(0):
        raise ValueError(
            f"prepare_channel_int8: {flat.numel()} scales for {codes.size(0)} output channels; "
            "accepted: one per channel"
        )
    kernel = "int8pack" if _int8pack_available() and codes.size(1) % 16 == 0 else "dequant"
    return ChannelInt8Weight(codes.contiguous(), flat.float().contiguous(), kernel)


def linear_channel_int8(x: torch.Tensor, weight: ChannelInt8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (q * scale).T + bias``; ``x`` ``[..., in]`` in any float dtype, result in ``x.dtype``."""
    if x.size(-1) != weight.in_features:
        raise ValueError(
            f"linear_channel_int8: input has {x.size(-1)} features; the weight expects {weight.in_features}"
        )
    rows = x.reshape(-1, weight.in_features)
    if weight.kernel == "int8pack":
        ones = torch.ones(weight.out_features, dtype=torch.bfloat16)
        out = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16), weight.codes, ones).float()
        out = out * weight.scale
    else:
        out = (rows.float() @ weight.codes.float().t()) * weight.scale
    out = out.to(x.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out.reshape(*x.shape[:-1], weight.out_features)
