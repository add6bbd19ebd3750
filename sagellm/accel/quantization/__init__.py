"""Quantization formats and converters: float <-> int8 / int4 / fp8 with scales.

- :mod:`.integer` -- asymmetric min/max grids with LMDeploy's KV semantics, int4 nibble packing.
- :mod:`.fp8` -- e4m3 / e5m2 with a scale.
- :mod:`.convert` -- :class:`QuantSpec`, :func:`quantize`, :class:`QuantizedTensor` over every
  granularity (per tensor, per token-head, per channel, per group).
- :mod:`.accuracy` -- the accuracy guard (quantized KV vs float KV through the real engine);
  imported on demand, it needs LMDeploy.
"""

from sagellm.accel.quantization.convert import (
    FLOAT_DTYPES,
    GRANULARITIES,
    QUANT_FORMATS,
    QuantizedTensor,
    QuantSpec,
    dequantize,
    fake_quantize,
    quantize,
)
from sagellm.accel.quantization.fp8 import FP8_DTYPES, dequantize_fp8, fp8_scale_from_amax, quantize_fp8
from sagellm.accel.quantization.integer import (
    INT_BITS,
    dequantize_grid,
    grid_max,
    pack_int4,
    quantize_rows,
    quantize_to_grid,
    scale_zero_from_range,
    unpack_int4,
)

__all__ = [
    "FLOAT_DTYPES",
    "FP8_DTYPES",
    "GRANULARITIES",
    "INT_BITS",
    "QUANT_FORMATS",
    "QuantSpec",
    "QuantizedTensor",
    "dequantize",
    "dequantize_fp8",
    "dequantize_grid",
    "fake_quantize",
    "fp8_scale_from_amax",
    "grid_max",
    "pack_int4",
    "quantize",
    "quantize_fp8",
    "quantize_rows",
    "quantize_to_grid",
    "scale_zero_from_range",
    "unpack_int4",
]
