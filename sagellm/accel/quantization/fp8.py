"""fp8 (e4m3, e5m2) with a scale: ``x ~ float(data) * scale``, ``data`` a torch float8 tensor.

The scale maps the largest magnitude of its group onto the format's largest finite value::

    scale = amax / finfo(fp8).max        (1 when amax == 0)
    data  = clamp(x / scale, -max, max).to(fp8)      round to nearest even

Error bound per element, for ``m`` mantissa bits (e4m3: 3, e5m2: 2)::

    |x - float(data) * scale| <= 2**-(m+1) * |x|  +  scale * subnormal_step / 2

where ``subnormal_step`` is the smallest positive subnormal (e4m3: 2**-9, e5m2: 2**-16): the
relative term covers normal numbers, the absolute term values that land in the subnormal range.
"""

from __future__ import annotations

import torch

#: fp8 format name -> torch dtype (``e4m3fn``: no infinities, max 448; ``e5m2``: IEEE-like, max 57344).
FP8_DTYPES: dict[str, torch.dtype] = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
#: Mantissa bits of each format.
FP8_MANTISSA_BITS: dict[str, int] = {"fp8_e4m3": 3, "fp8_e5m2": 2}
#: Smallest positive subnormal of each format.
FP8_SUBNORMAL_STEP: dict[str, float] = {"fp8_e4m3": 2.0**-9, "fp8_e5m2": 2.0**-16}


def fp8_dtype(name: str) -> torch.dtype:
    if name not in FP8_DTYPES:
        raise ValueError(f"fp8_dtype: name got {name!r}; accepted: one of {', '.join(map(repr, FP8_DTYPES))}")
    return FP8_DTYPES[name]


def fp8_scale_from_amax(amax: torch.Tensor, name: str, storage_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scale mapping ``amax`` onto the largest finite value of format ``name``."""
    fmax = torch.finfo(fp8_dtype(name)).max
    amax = amax.float()
    scale = torch.where(amax > 0, amax / fmax, torch.ones_like(amax))
    return scale.to(storage_dtype)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor, name: str) -> torch.Tensor:
    """``clamp(x / scale).to(fp8)``; ``scale`` broadcasts against ``x`` and is used as given."""
    dtype = fp8_dtype(name)
    fmax = torch.finfo(dtype).max
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(compute) / scale.to(compute)).clamp_(-fmax, fmax).to(dtype)


def dequantize_fp8(data: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``float(data) * scale`` in ``dtype``."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return (data.to(compute) * scale.to(compute)).to(dtype)
