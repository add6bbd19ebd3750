"""Format converters against float64 references: error bounds, shapes, packing, validation."""

from __future__ import annotations

import pytest
import torch

from sagellm.accel.quantization import (
    QuantSpec,
    dequantize,
    fake_quantize,
    grid_max,
    pack_int4,
    quantize,
    quantize_rows,
    scale_zero_from_range,
    unpack_int4,
)
from sagellm.accel.quantization.fp8 import FP8_MANTISSA_BITS, FP8_SUBNORMAL_STEP
from sagellm.core.quant import QuantizationProfile

FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def _sample(dtype: torch.dtype, shape=(6, 3, 16), seed: int = 0) -> torch.Tensor:
    """Normal values with a few outliers and one constant row, in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2.0 + 0.5
    x.view(-1)[:: 37] *= 8.0
    x[0, 0] = 1.25  # a constant vector: its scale degenerates
    return x.to(dtype)


def _expand_per_element(stat: torch.Tensor, shape: torch.Size, spec: QuantSpec) -> torch.Tensor:
    if spec.granularity == "per_group":
        grouped = (*shape[:-1], shape[-1] // spec.group_size, spec.group_size)
        return stat.expand(grouped).reshape(shape)
    return stat.expand(shape)


# ---------------------------------------------------------------------------------------------- int grids


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize(
    "granularity, group_size",
    [("per_token_head", None), ("per_channel", None), ("per_group", 8), ("per_tensor", None)],
)
def test_int_error_within_half_a_step(dtype, fmt, granularity, group_size):
    x = _sample(dtype)
    spec = QuantSpec(fmt, granularity, group_size)
    qt = quantize(x, spec)
    decoded = qt.dequantize(torch.float64)  # exact decode of the stored codes with the float32 scale/zero
    scale = _expand_per_element(qt.scale.double(), x.shape, spec)
    err = (decoded - x.double()).abs()
    # |x - x_hat| <= scale / 2, plus float32 rounding of x / scale + zero (codes <= 255 -> ~2**-16 of a step)
    assert bool((err <= scale * (0.5 + 2e-5)).all()), float((err / scale).max())
    assert qt.data.dtype == torch.uint8
    assert int(unpack_int4(qt.data).max() if fmt == "int4" else qt.data.max()) <= grid_max(8 if fmt == "int8" else 4)


@pytest.mark.parametrize("fmt, bits", [("int8", 8), ("int4", 4)])
def test_grid_uses_lmdeploy_scale_and_zero(fmt, bits):
    """scale = (max - min) / qmax, zero = -min / scale; min decodes to code 0, max to qmax."""
    x = torch.tensor([[-1.0, 0.0, 0.5, 3.0]])
    qt = quantize(x, QuantSpec(fmt))
    qmax = (1 << bits) - 1
    assert qt.scale.item() == pytest.approx(4.0 / qmax)
    assert qt.zero.item() == pytest.approx(1.0 / (4.0 / qmax))
    codes = unpack_int4(qt.data) if bits == 4 else qt.data
    assert codes[0, 0].item() == 0 and codes[0, -1].item() == qmax
    assert qt.dequantize(torch.float64)[0, [0, 3]].tolist() == pytest.approx([-1.0, 3.0], abs=1e-6)


def test_constant_vector_decodes_exactly():
    x = torch.full((2, 8), -3.5)
    for fmt in ("int8", "int4"):
        assert torch.equal(fake_quantize(x, QuantSpec(fmt)), x)


def test_scale_shapes_by_granularity():
    x = _sample(torch.float32, (5, 2, 16))
    assert quantize(x, QuantSpec("int8")).scale.shape == (5, 2, 1)
    assert quantize(x, QuantSpec("int8", "per_channel")).scale.shape == (1, 2, 16)
    assert quantize(x, QuantSpec("int8", "per_group", 4)).scale.shape == (5, 2, 4, 1)
    assert quantize(x, QuantSpec("int8", "per_tensor")).scale.shape == (1, 1, 1)
    assert quantize(x, QuantSpec("fp8_e4m3", "per_channel")).zero is None


def test_per_token_head_matches_quantize_rows():
    """The generic converter and the KV kernel's row quantizer are the same grid."""
    x = _sample(torch.float32, (7, 2, 16))
    qt = quantize(x, QuantSpec("int8"))
    codes, scale, zero = quantize_rows(x, 8)
    assert torch.equal(qt.data, codes)
    assert torch.equal(qt.scale[..., 0], scale) and torch.equal(qt.zero[..., 0], zero)


def test_low_precision_scale_storage_stays_bounded():
    """Scales stored in bf16 (LMDeploy stores them in the model dtype): codes use the stored values."""
    x = _sample(torch.bfloat16)
    qt = quantize(x, QuantSpec("int8", scale_dtype="bfloat16"))
    assert qt.scale.dtype == torch.bfloat16 and qt.zero.dtype == torch.bfloat16
    err = (qt.dequantize(torch.float64) - x.double()).abs()
    scale = qt.scale.double().expand(x.shape)
    amax = x.double().abs().amax(dim=-1, keepdim=True).expand(x.shape)
    # half a step, plus what clamping loses at the range ends from rounding scale and zero (bf16: 2**-8 relative)
    assert bool((err <= scale * 0.5 + 4 * 2**-8 * amax + 1e-6).all())


def test_nbytes_counts_data_and_scales():
    x = torch.randn(4, 2, 16)
    assert quantize(x, QuantSpec("int8")).nbytes == 4 * 2 * 16 + 2 * (4 * 2 * 4)
    assert quantize(x, QuantSpec("int4")).nbytes == 4 * 2 * 8 + 2 * (4 * 2 * 4)
    assert quantize(x, QuantSpec("fp8_e5m2", "per_tensor")).nbytes == 4 * 2 * 16 + 4


# ---------------------------------------------------------------------------------------------- int4 packing


def test_int4_nibble_order_is_lmdeploys():
    """Byte j = element j (low nibble) | element j + D/2 (high nibble)."""
    codes = torch.tensor([[1, 2, 3, 4, 9, 10, 11, 15]], dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.tolist() == [[1 | 9 << 4, 2 | 10 << 4, 3 | 11 << 4, 4 | 15 << 4]]
    assert torch.equal(unpack_int4(packed), codes)


def test_int4_pack_roundtrip_random():
    codes = torch.randint(0, 16, (3, 5, 64), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)


def test_int4_rejects_odd_last_axis():
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="int4"):
        quantize(torch.randn(2, 5), QuantSpec("int4"))


# ---------------------------------------------------------------------------------------------- fp8


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_token_head"])
def test_fp8_relative_error_bound(dtype, fmt, granularity):
    x = _sample(dtype, (8, 4, 32), seed=3)
    spec = QuantSpec(fmt, granularity)
    qt = quantize(x, spec)
    assert qt.data.dtype == {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[fmt]
    decoded = qt.dequantize(torch.float64)
    ref = x.double()
    scale = qt.scale.double().expand(x.shape)
    rel = 2.0 ** -(FP8_MANTISSA_BITS[fmt] + 1)
    bound = rel * ref.abs() + scale * FP8_SUBNORMAL_STEP[fmt] / 2
    # the scale rescales x by a float32 division first: allow its rounding (2**-24 relative) on top
    assert bool(((decoded - ref).abs() <= bound * (1 + 1e-6) + ref.abs() * 2**-23).all())
    # the largest magnitude of each group maps to (about) the format's max: no clipping, no overflow
    assert bool(torch.isfinite(qt.data.float()).all())


def test_fp8_zero_tensor_has_unit_scale():
    qt = quantize(torch.zeros(3, 4), QuantSpec("fp8_e4m3", "per_tensor"))
    assert qt.scale.item() == 1.0
    assert torch.equal(qt.dequantize(), torch.zeros(3, 4))


# ---------------------------------------------------------------------------------------------- API


@pytest.mark.parametrize("out_dtype", FLOATS)
def test_dequantize_to_any_float_dtype(out_dtype):
    x = torch.randn(4, 32)
    qt = quantize(x, QuantSpec("int8", "per_group", 16))
    y = dequantize(qt, out_dtype)
    assert y.dtype == out_dtype and y.shape == x.shape


def test_scale_zero_from_range_degenerate():
    scale, zero = scale_zero_from_range(torch.tensor([2.0, -1.0]), torch.tensor([2.0, 1.0]), 8)
    assert scale.tolist() == pytest.approx([1.0, 2.0 / 255])
    assert zero.tolist() == pytest.approx([-2.0, 127.5])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="int2"), "QuantSpec.dtype: got 'int2'"),
        (dict(dtype="int8", granularity="per_block"), "QuantSpec.granularity"),
        (dict(dtype="int8", granularity="per_group"), "QuantSpec.group_size: got None"),
        (dict(dtype="int8", granularity="per_group", group_size=12), "QuantSpec.group_size: got 12"),
        (dict(dtype="int8", group_size=16), "QuantSpec.group_size: got 16"),
        (dict(dtype="int8", scale_dtype="float64"), "QuantSpec.scale_dtype"),
    ],
)
def test_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)


def test_group_size_must_divide_last_axis():
    with pytest.raises(ValueError, match="multiple of group_size"):
        quantize(torch.randn(2, 24), QuantSpec("int8", "per_group", 16))


def test_rejects_non_float_input():
    with pytest.raises(ValueError, match="dtype"):
        quantize(torch.ones(2, 4, dtype=torch.int32), QuantSpec("int8"))


def test_spec_from_profile():
    spec = QuantSpec.from_profile(QuantizationProfile(kv_dtype="int4", granularity="per_group", group_size=32))
    assert spec == QuantSpec("int4", "per_group", 32)
    with pytest.raises(ValueError, match="auto"):
        QuantSpec.from_profile(QuantizationProfile())
