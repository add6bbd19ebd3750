"""Weight quantization grids and the AWQ int32 packing LMDeploy loads.

Two weight-only formats, both for a linear weight ``W`` of shape ``[out, in]`` (Hugging Face
layout):

* **group-wise asymmetric** (AWQ, ``bits`` 4 or 8): every run of ``group_size`` consecutive
  input elements of one output row shares a float ``scale`` and an *integer* zero point::

      q = clamp(round(w / scale) + zero, 0, qmax)          w ~ (q - zero) * scale

  ``scale = (max - min) / qmax`` over the group, with the range widened to include 0 (so the
  zero point is always on the grid and 0 is exact), stored in ``scale_dtype`` (AWQ: float16);
  ``zero = round(-min / scale)``. Codes are computed against the *stored* scale.

* **per-channel symmetric int8** (LMDeploy's W8A8 / SmoothQuant checkpoint layout): one float32
  scale per output row, ``scale = amax / 127``, ``q = clamp(round(w / scale), -127, 127)``,
  ``w ~ q * scale``.

Error bounds (tested against float64): symmetric ``|w - q*scale| <= scale / 2``; group-wise
``|w - (q - zero)*scale| <= scale * (1/2 + qmax * eps)``, where ``eps`` is the relative rounding
of the stored scale (2^-11 for float16, 2^-24 for float32): rounding the zero point shifts the
grid by at most half a step, and a slightly-too-small stored scale can leave the group maximum up
to ``qmax * eps`` steps past the grid's top (float32 arithmetic adds ``qmax * 2^-22`` steps of slack).

AWQ packing (what ``lmdeploy lite auto_awq`` writes and LMDeploy's ``AwqLinear`` loads): codes are
stored transposed, ``[in, out]``, and ``32 / bits`` consecutive output columns share one int32.
For 4 bits the nibble order inside the int32 is interleaved -- nibble ``i`` (bits ``4i .. 4i+3``)
holds column ``AWQ_ORDER_4[i]`` of the eight; for 8 bits byte ``i`` holds column ``i``::

    qweight [in, out / (32/bits)]  int32     qzeros [in / group, out / (32/bits)]  int32
    scales  [in / group, out]      float16
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sagellm.core.validation import check_choice

#: Bits per code of the group-wise formats.
GROUP_BITS: tuple[int, ...] = (4, 8)
#: Column held by nibble ``i`` of an AWQ 4-bit int32 (AutoAWQ's "GEMM" order).
AWQ_ORDER_4: tuple[int, ...] = (0, 2, 4, 6, 1, 3, 5, 7)
#: Column held by byte ``i`` of an AWQ 8-bit int32 (LMDeploy lite's sequential order).
AWQ_ORDER_8: tuple[int, ...] = (0, 1, 2, 3)
#: Relative rounding of a scale stored in each dtype (half an ulp at 1.0).
_SCALE_EPS: dict[torch.dtype, float] = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11,
                                        torch.bfloat16: 2.0**-8}


def _awq_order(bits: int) -> tuple[int, ...]:
    check_choice("awq packing", "bits", bits, GROUP_BITS)
    return AWQ_ORDER_4 if bits == 4 else AWQ_ORDER_8


def scale_rounding_eps(dtype: torch.dtype) -> float:
    """Relative error of rounding a positive scale to ``dtype`` (for error bounds)."""
    check_choice("scale_rounding_eps", "dtype", dtype, tuple(_SCALE_EPS))
    return _SCALE_EPS[dtype]


@dataclass(frozen=True)
class GroupQuantized:
    """A weight ``[out, in]`` quantized group-wise along ``in`` (see the module docstring).

    Attributes:
        codes: uint8 ``[out, in]``, each ``0 .. 2**bits - 1``.
        scales: ``[out, in / group_size]`` in the scale dtype.
        zeros: uint8 ``[out, in / group_size]`` integer zero points on the same grid.
        bits: 4 or 8.
        group_size: input elements per scale.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        check_choice("GroupQuantized", "bits", self.bits, GROUP_BITS)
        out, in_features = self.codes.shape
        groups = (out, in_features // self.group_size)
        if in_features % self.group_size or tuple(self.scales.shape) != groups or tuple(self.zeros.shape) != groups:
            raise ValueError(
                f"GroupQuantized: codes {tuple(self.codes.shape)}, scales {tuple(self.scales.shape)}, zeros "
                f"{tuple(self.zeros.shape)} do not fit group_size {self.group_size}; accepted: scales and zeros "
                f"of shape [out, in / group_size]"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(q - zero) * scale`` as ``[out, in]`` in ``dtype`` (computed in float64 for float64, else float32)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        codes = self.codes.to(work).unflatten(1, (-1, self.group_size))
        values = (codes - self.zeros.to(work)[..., None]) * self.scales.to(work)[..., None]
        return values.flatten(1).to(dtype)


def _check_weight(owner: str, weight: torch.Tensor) -> None:
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{owner}: got a {weight.dim()}-d {weight.dtype} tensor; accepted: a float [out, in] weight")


def quantize_groupwise(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    scale_dtype: torch.dtype = torch.float16,
) -> GroupQuantized:
    """Group-wise asymmetric quantization of ``weight`` ``[out, in]`` (AWQ semantics, integer zeros)."""
    _check_weight("quantize_groupwise", weight)
    check_choice("quantize_groupwise", "bits", bits, GROUP_BITS)
    out, in_features = weight.shape
    if not isinstance(group_size, int) or group_size < 1 or in_features % group_size:
        raise ValueError(
            f"quantize_groupwise: group_size {group_size!r} does not divide in_features {in_features}; "
            "accepted: a positive divisor of the input dimension"
        )
    qmax = (1 << bits) - 1
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    groups = weight.to(work).unflatten(1, (-1, group_size))  # [out, G, g]
    low = groups.amin(dim=-1).clamp(max=0.0)
    high = groups.amax(dim=-1).clamp(min=0.0)
    span = high - low
    scale = torch.where(span > 0, span / qmax, torch.ones_like(span)).to(scale_dtype)
    stored = scale.to(work)
    zero = torch.round(-low / stored).clamp(0, qmax)
    codes = torch.round(groups / stored[..., None]) + zero[..., None]
    codes = codes.clamp(0, qmax).to(torch.uint8).flatten(1)
    return GroupQuantized(codes, scale, zero.to(torch.uint8), bits, group_size)


def group_error_bound(quantized: GroupQuantized) -> torch.Tensor:
    """Per element ``[out, in]`` bound on ``|w - dequantize()|`` (see the module docstring), float64."""
    qmax = (1 << quantized.bits) - 1
    eps = scale_rounding_eps(quantized.scales.dtype)
    scale = quantized.scales.double().repeat_interleave(quantized.group_size, dim=1)
    return scale * (0.5 + qmax * (eps + 2.0**-22))


def quantize_channelwise_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: (int8 ``[out, in]``, float32 scale ``[out, 1]``), ``w ~ q * scale``."""
    _check_weight("quantize_channelwise_int8", weight)
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.to(work)
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.float32)
    codes = torch.round(w / scale.to(work)).clamp(-127, 127).to(torch.int8)
    return codes, scale


def dequantize_channelwise_int8(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32):
    """``q * scale`` as ``[out, in]`` in ``dtype``."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    return (codes.to(work) * scale.to(work)).to(dtype)


# --------------------------------------------------------------------------- AWQ int32 packing


def pack_awq(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``[rows, cols]`` codes (``0 .. 2**bits - 1``) into int32 ``[rows, cols * bits / 32]`` in AWQ order."""
    order = _awq_order(bits)
    per_int = 32 // bits
    rows, cols = codes.shape
    if cols % per_int:
        raise ValueError(f"pack_awq: {cols} columns is not a multiple of {per_int} (codes per int32 at {bits} bits)")
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(f"pack_awq: a code exceeds {(1 << bits) - 1} ({bits} bits)")
    grouped = codes.to(torch.int64).view(rows, cols // per_int, per_int)
    packed = torch.zeros(rows, cols // per_int, dtype=torch.int64, device=codes.device)
    for slot, column in enumerate(order):
        packed |= grouped[..., column] << (bits * slot)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # two's complement into int32
    return packed.to(torch.int32)


def unpack_awq(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_awq`: int32 ``[rows, n]`` -> uint8 ``[rows, n * 32 / bits]``."""
    order = _awq_order(bits)
    if packed.dtype != torch.int32:
        raise ValueError(f"unpack_awq: got {packed.dtype}; accepted: torch.int32")
    per_int = 32 // bits
    mask = (1 << bits) - 1
    words = packed.to(torch.int64) & 0xFFFFFFFF
    rows, n = packed.shape
    codes = torch.empty(rows, n, per_int, dtype=torch.uint8, device=packed.device)
    for slot, column in enumerate(order):
        codes[..., column] = ((words >> (bits * slot)) & mask).to(torch.uint8)
    return codes.view(rows, n * per_int)


@dataclass(frozen=True)
class AwqTensors:
    """One linear layer in AWQ checkpoint layout (see the module docstring)."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor


def to_awq(quantized: GroupQuantized) -> AwqTensors:
    """AWQ checkpoint tensors of a group-quantized ``[out, in]`` weight."""
    return AwqTensors(
        qweight=pack_awq(quantized.codes.t(), quantized.bits),
        qzeros=pack_awq(quantized.zeros.t(), quantized.bits),
        scales=quantized.scales.t().contiguous(),
    )


def from_awq(tensors: AwqTensors, bits: int, group_size: int) -> GroupQuantized:
    """Inverse of :func:`to_awq`."""
    codes = unpack_awq(tensors.qweight, bits).t().contiguous()
    zeros = unpack_awq(tensors.qzeros, bits).t().contiguous()
    return GroupQuantized(codes, tensors.scales.t().contiguous(), zeros, bits, group_size)
