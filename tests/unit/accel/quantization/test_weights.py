"""Weight grids vs float64 references, and the AWQ int32 packing."""

from __future__ import annotations

import pytest
import torch

from sagellm.accel.quantization.weights import (
    AWQ_ORDER_4,
    AwqTensors,
    dequantize_channelwise_int8,
    from_awq,
    group_error_bound,
    pack_awq,
    quantize_channelwise_int8,
    quantize_groupwise,
    to_awq,
    unpack_awq,
)


def _weights(out=48, in_features=256, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, in_features, generator=g, dtype=torch.float64) * 0.05
    w[0, :32] += 3.0  # an outlier group
    w[1] = 0.0  # an all-zero row
    w[2, :] = 0.25  # a constant, all-positive row (the zero point must still be on the grid)
    w[3, :] = -0.5
    return w.to(dtype)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32])
def test_groupwise_error_within_bound(bits, group_size, scale_dtype):
    w = _weights()
    q = quantize_groupwise(w, bits, group_size, scale_dtype=scale_dtype)
    assert q.codes.dtype == torch.uint8 and q.zeros.dtype == torch.uint8 and q.scales.dtype == scale_dtype
    assert int(q.codes.max()) <= (1 << bits) - 1 and int(q.zeros.max()) <= (1 << bits) - 1
    error = (q.dequantize(torch.float64) - w.double()).abs()
    assert bool((error <= group_error_bound(q)).all())
    # zeros and constant rows decode exactly
    assert torch.equal(q.dequantize(torch.float64)[1], torch.zeros(256, dtype=torch.float64))
    assert float(error[2:4].max()) <= 0.5 * 2.0**-10  # a constant is the grid's end point (up to scale rounding)


def test_groupwise_exact_values():
    # one group of 4: range [-1, 2] widened to include 0 is itself; scale 3/15 = 0.2, zero round(1/0.2) = 5
    w = torch.tensor([[-1.0, 0.0, 0.62, 2.0]])
    q = quantize_groupwise(w, 4, 4, scale_dtype=torch.float32)
    assert torch.allclose(q.scales, torch.tensor([[0.2]]))
    assert q.zeros.tolist() == [[5]]
    assert q.codes.tolist() == [[0, 5, 8, 15]]  # round(w / 0.2) + 5: -5, 0, 3 (0.62 / 0.2 = 3.1), 10
    assert torch.allclose(q.dequantize(), torch.tensor([[-1.0, 0.0, 0.6, 2.0]]))


def test_groupwise_rejects_bad_input():
    with pytest.raises(ValueError, match="group_size"):
        quantize_groupwise(torch.zeros(4, 100), 4, 64)
    with pytest.raises(ValueError, match="bits"):
        quantize_groupwise(torch.zeros(4, 64), 3, 32)
    with pytest.raises(ValueError, match="float"):
        quantize_groupwise(torch.zeros(4, 64, dtype=torch.int32), 4, 32)


def test_channelwise_int8_error_within_half_step():
    w = _weights(dtype=torch.float32)
    codes, scale = quantize_channelwise_int8(w)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32 and tuple(scale.shape) == (48, 1)
    assert int(codes.abs().max()) <= 127
    error = (dequantize_channelwise_int8(codes, scale, torch.float64) - w.double()).abs()
    assert bool((error <= scale.double() / 2 * (1 + 2**-20)).all())
    assert torch.equal(codes[1], torch.zeros(256, dtype=torch.int8))
    assert int(codes[0].abs().max()) == 127  # the row maximum maps to the end of the grid


def test_awq_4bit_order_is_the_interleaved_one():
    codes = torch.arange(8, dtype=torch.uint8)[None, :]  # column c holds value c
    packed = pack_awq(codes, 4)
    expected = sum(col << (4 * slot) for slot, col in enumerate(AWQ_ORDER_4))
    assert packed.dtype == torch.int32 and packed.tolist() == [[expected]]
    assert expected == 0x75316420


def test_awq_8bit_order_is_sequential():
    codes = torch.tensor([[1, 2, 3, 250]], dtype=torch.uint8)
    packed = pack_awq(codes, 8)
    assert packed.tolist() == [[1 | 2 << 8 | 3 << 16 | (250 << 24) - 2**32]]  # top byte >= 128: negative int32


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 1 << bits, (5, 64), generator=g).to(torch.uint8)
    assert torch.equal(unpack_awq(pack_awq(codes, bits), bits), codes)


def test_pack_rejects_bad_shapes_and_codes():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_awq(torch.zeros(2, 12, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="exceeds 15"):
        pack_awq(torch.full((1, 8), 16, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match="int32"):
        unpack_awq(torch.zeros(1, 1, dtype=torch.int64), 4)


@pytest.mark.parametrize("bits", [4, 8])
def test_awq_tensors_round_trip(bits):
    w = _weights(out=64, in_features=256)
    q = quantize_groupwise(w, bits, 64)
    awq = to_awq(q)
    per_int = 32 // bits
    assert tuple(awq.qweight.shape) == (256, 64 // per_int)
    assert tuple(awq.qzeros.shape) == (4, 64 // per_int)
    assert tuple(awq.scales.shape) == (4, 64) and awq.scales.dtype == torch.float16
    back = from_awq(AwqTensors(awq.qweight, awq.qzeros, awq.scales), bits, 64)
    assert torch.equal(back.codes, q.codes) and torch.equal(back.zeros, q.zeros) and torch.equal(back.scales, q.scales)
