"""CPU weight-quantized linears vs float64 references (the dequantized weight, and the original float weight)."""

from __future__ import annotations

import pytest
import torch

from sagellm.accel.kernels.cpu.quant_linear import (
    group_kernel_for,
    linear_channel_int8,
    linear_group,
    prepare_channel_int8,
    prepare_group_weight,
)
from sagellm.accel.quantization.weights import (
    dequantize_channelwise_int8,
    group_error_bound,
    quantize_channelwise_int8,
    quantize_groupwise,
)

BF16_BOUND = 2.0**-7  # bf16 rounding of activations, scale/offset and result (see the kernel's docstring)


def _data(out, in_features, rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, in_features, generator=g, dtype=torch.float64) * 0.05
    x = torch.randn(rows, in_features, generator=g, dtype=torch.float64)
    return w, x


def test_kernel_choice():
    assert group_kernel_for(4, 1280, 768, 128) == "int4pack"
    assert group_kernel_for(4, 1280, 768, 16) == "dequant"  # group size torch's kernel rejects
    assert group_kernel_for(4, 1288, 768, 128) == "dequant"  # out not a multiple of 16
    assert group_kernel_for(8, 1280, 768, 128) == "dequant"  # no packed 8-bit group kernel
    assert prepare_channel_int8(torch.zeros(8, 64, dtype=torch.int8), torch.ones(8)).kernel == "int8pack"
    assert prepare_channel_int8(torch.zeros(8, 40, dtype=torch.int8), torch.ones(8)).kernel == "dequant"


@pytest.mark.parametrize("rows", [1, 3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_int4pack_linear_within_bounds(rows, dtype):
    w, x64 = _data(96, 256, rows)
    q = quantize_groupwise(w, 4, 64, scale_dtype=torch.float16)
    prepared = prepare_group_weight(q)
    assert prepared.kernel == "int4pack"
    x = x64.to(dtype)
    bias = torch.linspace(-1, 1, 96, dtype=dtype)
    y = linear_group(x, prepared, bias).double()
    assert y.dtype == torch.float64 and tuple(y.shape) == (rows, 96)

    xd = x.double()
    w_hat = q.dequantize(torch.float64)
    exact = xd @ w_hat.t() + bias.double()
    scale = q.scales.double().repeat_interleave(64, dim=1)
    offset = ((8 - q.zeros.double()) * q.scales.double()).abs().repeat_interleave(64, dim=1)
    magnitude = w_hat.abs() + (q.codes.double() - 8).abs() * scale + offset
    out_rounding = {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    bound = BF16_BOUND * (xd.abs() @ magnitude.t()) + out_rounding * (exact.abs() + bias.double().abs()) + 1e-6
    assert bool(((y - exact).abs() <= bound).all())

    # against the original float64 weight: add the quantization error bound
    reference = xd @ w.t() + bias.double()
    quant_bound = xd.abs() @ group_error_bound(q).t()
    assert bool(((y - reference).abs() <= bound + quant_bound).all())


@pytest.mark.parametrize("bits,group_size", [(8, 64), (4, 16)])
def test_dequant_linear_is_float32_exact(bits, group_size):
    w, x64 = _data(40, 128, 5)
    q = quantize_groupwise(w, bits, group_size, scale_dtype=torch.float16)
    prepared = prepare_group_weight(q)
    assert prepared.kernel == "dequant"
    x = x64.float()
    y = linear_group(x, prepared).double()
    exact = x.double() @ q.dequantize(torch.float64).t()
    # float32 dot products of 128 terms: |err| <= 128 * 2^-24 * sum |x||w_hat| (a loose standard bound)
    bound = 128 * 2.0**-24 * (x.double().abs() @ q.dequantize(torch.float64).abs().t()) + 1e-9
    assert bool(((y - exact).abs() <= bound).all())


def test_int4pack_can_be_declined_and_bad_choice_is_rejected():
    w, _ = _data(96, 256, 1)
    q = quantize_groupwise(w, 4, 64)
    assert prepare_group_weight(q, "dequant").kernel == "dequant"
    q16 = quantize_groupwise(w, 4, 16)
    with pytest.raises(ValueError, match="accepted here: 'dequant'"):
        prepare_group_weight(q16, "int4pack")
    with pytest.raises(ValueError, match="expects 256"):
        linear_group(torch.zeros(2, 128), prepare_group_weight(q))


@pytest.mark.parametrize("rows", [1, 4, 33])
@pytest.mark.parametrize("in_features", [64, 96])
def test_int8pack_linear_within_bounds(rows, in_features):
    w, x64 = _data(24, in_features, rows)
    codes, scale = quantize_channelwise_int8(w)
    prepared = prepare_channel_int8(codes, scale)
    assert prepared.kernel == "int8pack"
    x = x64.float()
    y = linear_channel_int8(x, prepared).double()
    w_hat = dequantize_channelwise_int8(codes, scale, torch.float64)
    xd = x.double()
    exact = xd @ w_hat.t()
    bound = BF16_BOUND * (xd.abs() @ w_hat.abs().t()) + 1e-6
    assert bool(((y - exact).abs() <= bound).all())
    reference = xd @ w.t()
    assert bool(((y - reference).abs() <= bound + xd.abs() @ (scale.double() / 2).expand_as(w).t()).all())


def test_int8_dequant_path_for_odd_widths():
    w, x64 = _data(10, 40, 3)
    codes, scale = quantize_channelwise_int8(w)
    prepared = prepare_channel_int8(codes, scale)
    assert prepared.kernel == "dequant"
    y = linear_channel_int8(x64.float(), prepared, torch.ones(10)).double()
    exact = x64.float().double() @ dequantize_channelwise_int8(codes, scale, torch.float64).t() + 1
    assert float((y - exact).abs().max()) <= 1e-4


def test_channel_int8_rejects_bad_weights():
    with pytest.raises(ValueError, match="int8"):
        prepare_channel_int8(torch.zeros(4, 16), torch.ones(4))
    with pytest.raises(ValueError, match="one per channel"):
        prepare_channel_int8(torch.zeros(4, 16, dtype=torch.int8), torch.ones(3))
