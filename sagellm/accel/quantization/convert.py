"""Format converters: float tensors (fp32 / bf16 / fp16) <-> int8 / int4 / fp8 with scales.

A :class:`QuantSpec` names the target format and how scales are shared; :func:`quantize`
turns a float tensor into a :class:`QuantizedTensor` and :meth:`QuantizedTensor.dequantize`
(or :func:`dequantize`) turns it back into any float dtype.

Granularity = which elements share one scale (and, for integer formats, one zero point).
For a tensor ``x`` of shape ``[N, ..., D]``:

==================  ====================================  ===============================================
granularity         elements sharing a scale              scale shape (kept dims, broadcastable)
==================  ====================================  ===============================================
``per_tensor``      all of ``x``                          ``[1, ..., 1]``
``per_token_head``  one vector along the last axis        ``[N, ..., 1]``  (KV ``[T, H, D]``: per token
                                                          per head, LMDeploy's layout; a weight
                                                          ``[out, in]``: per output channel)
``per_channel``     one position of the trailing axes,    ``[1, ..., D]``  (KV: per head-dim channel across
                    across the first axis                 tokens; a weight ``[out, in]``: per input channel)
``per_group``       ``group_size`` consecutive elements   ``[N, ..., D / g, 1]`` over the view
                    of the last axis                      ``x.unflatten(-1, (D / g, g))``
==================  ====================================  ===============================================

Integer formats (:mod:`.integer`) are asymmetric min/max grids with a float zero point;
int4 codes are packed two per byte along the last axis in LMDeploy's nibble order (the last
axis must be even). fp8 formats (:mod:`.fp8`) are symmetric: a scale, no zero point.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from sagellm.accel.quantization.fp8 import FP8_DTYPES, dequantize_fp8, fp8_scale_from_amax, quantize_fp8
from sagellm.accel.quantization.integer import (
    INT_BITS,
    dequantize_grid,
    pack_int4,
    quantize_to_grid,
    scale_zero_from_range,
    unpack_int4,
)
from sagellm.core.kv import SCALE_DTYPES
from sagellm.core.quant import KV_GRANULARITIES, QuantizationProfile
from sagellm.core.validation import check_choice, check_group_size

#: Scale granularities (``per_tensor`` plus the KV granularities core knows).
GRANULARITIES: tuple[str, ...] = ("per_tensor", *KV_GRANULARITIES)
#: Float dtypes a tensor may be quantized from and dequantized to.
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class _Format(ABC):
    """One quantized element format: how a statistics view is encoded, stored and decoded."""

    name: str
    has_zero: bool

    @abstractmethod
    def encode(
        self, view: torch.Tensor, dims: tuple[int, ...], scale_dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(element data in the view's shape, scale, zero or None); scale/zero keep ``dims`` as size 1."""

    @abstractmethod
    def decode(self, data: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, dtype: torch.dtype):
        """Float values in the data's shape."""

    def pack(self, data: torch.Tensor) -> torch.Tensor:
        return data

    def unpack(self, stored: torch.Tensor) -> torch.Tensor:
        return stored


class _IntFormat(_Format):
    has_zero = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.bits = INT_BITS[name]

    def encode(self, view, dims, scale_dtype):
        scale, zero = scale_zero_from_range(
            view.amin(dim=dims, keepdim=True), view.amax(dim=dims, keepdim=True), self.bits, scale_dtype
        )
        return quantize_to_grid(view, scale, zero, self.bits), scale, zero

    def decode(self, data, scale, zero, dtype):
        return dequantize_grid(data, scale, zero, dtype)

    def pack(self, data):
        return pack_int4(data) if self.bits == 4 else data

    def unpack(self, stored):
        return unpack_int4(stored) if self.bits == 4 else stored


class _Fp8Format(_Format):
    has_zero = False

    def __init__(self, name: str) -> None:
        self.name = name

    def encode(self, view, dims, scale_dtype):
        scale = fp8_scale_from_amax(view.abs().amax(dim=dims, keepdim=True), self.name, scale_dtype)
        return quantize_fp8(view, scale, self.name), scale, None

    def decode(self, data, scale, zero, dtype):
        return dequantize_fp8(data, scale, dtype)


#: Format name -> implementation.
_FORMATS: dict[str, _Format] = {
    **{name: _IntFormat(name) for name in INT_BITS},
    **{name: _Fp8Format(name) for name in FP8_DTYPES},
}
#: Quantized formats :func:`quantize` accepts.
QUANT_FORMATS: tuple[str, ...] = tuple(_FORMATS)

_TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class QuantSpec:
    """Target format of a conversion.

    Attributes:
        dtype: one of ``QUANT_FORMATS`` (``int8``, ``int4``, ``fp8_e4m3``, ``fp8_e5m2``).
        granularity: one of ``GRANULARITIES`` (see the module docstring).
        group_size: elements per group along the last axis; a power of two, required for
            ``per_group`` and None otherwise.
        scale_dtype: dtype scales (and zeros) are stored in, one of ``float32``, ``float16``,
            ``bfloat16``. LMDeploy stores KV scales in the model dtype.
    """

    dtype: str
    granularity: str = "per_token_head"
    group_size: int | None = None
    scale_dtype: str = "float32"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "dtype", self.dtype, QUANT_FORMATS)
        check_choice(owner, "granularity", self.granularity, GRANULARITIES)
        check_choice(owner, "scale_dtype", self.scale_dtype, SCALE_DTYPES)
        check_group_size(owner, self.granularity, self.group_size)

    @classmethod
    def from_profile(cls, profile: QuantizationProfile, scale_dtype: str = "float32") -> QuantSpec:
        """The KV spec a ``QuantizationProfile`` asks for; raises for ``kv_dtype='auto'`` (nothing to convert)."""
        if not profile.is_kv_quantized:
            raise ValueError("QuantSpec.from_profile: profile.kv_dtype is 'auto' (model dtype); nothing to quantize")
        return cls(profile.kv_dtype, profile.granularity, profile.group_size, scale_dtype)

    @property
    def torch_scale_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.scale_dtype]

    @property
    def is_integer(self) -> bool:
        return _FORMATS[self.dtype].has_zero


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor in a quantized format.

    Attributes:
        data: element storage: uint8 codes (int4: two per byte along the last axis) or float8.
        scale: scales, broadcastable against the statistics view (see the module docstring).
        zero: float zero points for integer formats (same shape as ``scale``), None for fp8.
        spec: the format.
        shape: shape of the original float tensor.
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    spec: QuantSpec
    shape: torch.Size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor back in float ``dtype`` (float64 gives the exact decoded values of fp32 scales)."""
        _check_float_dtype("QuantizedTensor.dequantize", dtype)
        fmt = _FORMATS[self.spec.dtype]
        elements = fmt.unpack(self.data).reshape(_stats_shape(self.shape, self.spec))
        return fmt.decode(elements, self.scale, self.zero, dtype).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data + scale + zero."""
        total = self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            total += self.zero.numel() * self.zero.element_size()
        return total


def quantize(x: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantize float ``x`` (fp32 / bf16 / fp16 / fp64) to ``spec``; statistics are taken in float32 or better."""
    _check_float_dtype("quantize", x.dtype)
    if spec.dtype == "int4" and (x.dim() == 0 or x.size(-1) % 2):
        raise ValueError(f"quantize: int4 packs two codes per byte along the last axis; got shape {tuple(x.shape)}")
    fmt = _FORMATS[spec.dtype]
    view, dims = _stats_view(x, spec)
    elements, scale, zero = fmt.encode(view, dims, spec.torch_scale_dtype)
    elements = elements.reshape(x.shape)
    return QuantizedTensor(fmt.pack(elements), scale, zero, spec, x.shape)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same as ``qt.dequantize(dtype)``."""
    return qt.dequantize(dtype)


def fake_quantize(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` rounded through ``spec`` and back, in ``x``'s dtype (what a consumer of the quantized data sees)."""
    return quantize(x, spec).dequantize(x.dtype)


def _check_float_dtype(where: str, dtype: torch.dtype) -> None:
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"{where}: dtype got {dtype}; accepted: one of {', '.join(map(str, FLOAT_DTYPES))}")


def _stats_shape(shape: torch.Size, spec: QuantSpec) -> tuple[int, ...]:
    """Shape of the view whose ``dims`` (see :func:`_stats_view`) share a scale."""
    if spec.granularity != "per_group":
        return tuple(shape)
    return (*shape[:-1], shape[-1] // spec.group_size, spec.group_size)


def _stats_view(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple[int, ...]]:
    where = f"quantize({spec.granularity})"
    if spec.granularity == "per_tensor":
        return x, tuple(range(x.dim()))
    if x.dim() < 1:
        raise ValueError(f"{where}: needs a tensor with at least one axis, got a scalar")
    if spec.granularity == "per_token_head":
        return x, (x.dim() - 1,)
    if spec.granularity == "per_channel":
        if x.dim() < 2:
            raise ValueError(f"{where}: needs at least two axes (rows x channels), got shape {tuple(x.shape)}")
        return x, (0,)
    if x.size(-1) % spec.group_size:
        raise ValueError(
            f"{where}: last axis {x.size(-1)} is not a multiple of group_size {spec.group_size}"
        )
    view = x.reshape(_stats_shape(x.shape, spec))
    return view, (view.dim() - 1,)
