"""oneDNN packed linear: same results as F.linear up to rounding, repacked when the weight changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu.linear import (
    BUCKET_FROM_ROWS,
    PACKED_MIN_ROWS,
    PackedLinear,
    bucket_rows,
)
from tests.unit.accel.kernels.cpu.markers import needs_onednn


def _weights(out_features=48, in_features=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(out_features, in_features, generator=generator),
            torch.randn(out_features, generator=generator))


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 32), (7, 32), (1, 5, 32), (0, 32)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_f_linear_up_to_rounding(shape, with_bias):
    weight, bias = _weights()
    bias = bias if with_bias else None
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    layer = PackedLinear(min_rows=0)
    with torch.inference_mode():
        out = layer(x, weight, bias)
    expected = F.linear(x, weight, bias)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert layer.is_packed


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 32), (3, 32), (1, 3, 32)])
def test_inputs_of_fewer_rows_than_min_rows_take_f_linear_exactly_and_never_pack(shape):
    weight, bias = _weights()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    layer = PackedLinear()
    assert PACKED_MIN_ROWS == 4
    with torch.inference_mode():
        assert torch.equal(layer(x, weight, bias), F.linear(x, weight, bias))
    assert not layer.is_packed


@needs_onednn
def test_an_input_of_min_rows_rows_packs():
    weight, bias = _weights()
    layer = PackedLinear(min_rows=4)
    with torch.inference_mode():
        layer(torch.randn(3, 32), weight, bias)
        assert not layer.is_packed
        out = layer(torch.randn(2, 2, 32), weight, bias)
    assert layer.is_packed and out.shape == (2, 2, 48)


@pytest.mark.parametrize("rows, bucket", [(1, 1), (37, 37), (64, 64), (65, 72), (72, 72), (73, 80),
                                          (127, 128), (128, 128), (129, 144), (200, 208), (1000, 1024),
                                          (1025, 1152), (4097, 4608)])
def test_bucket_rows(rows, bucket):
    assert BUCKET_FROM_ROWS == 64
    assert bucket_rows(rows) == bucket


def test_buckets_add_at_most_an_eighth_and_are_8_per_doubling():
    buckets = [bucket_rows(rows) for rows in range(1, 8193)]
    assert all(rows <= b <= rows + rows // 8 for rows, b in zip(range(1, 8193), buckets))
    for low in (64, 128, 1024, 4096):
        assert len({b for rows, b in zip(range(1, 8193), buckets) if low < rows <= 2 * low}) == 8


@needs_onednn
@pytest.mark.parametrize("shape", [(65, 32), (1, 200, 32), (2, 100, 32)])
def test_padded_inputs_match_f_linear_up_to_rounding(shape):
    weight, bias = _weights()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = PackedLinear(min_rows=0)(x, weight, bias)
    assert out.shape == (*shape[:-1], 48) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_row_counts_of_one_bucket_give_the_same_rows_bit_for_bit():
    """200 rows are padded to 208, so they come out exactly as the first 200 of a 208-row input."""
    weight, bias = _weights(out_features=96, in_features=64)
    x = torch.randn(208, 64, generator=torch.Generator().manual_seed(2))
    layer = PackedLinear(min_rows=0)
    with torch.inference_mode():
        assert torch.equal(layer(x[:200], weight, bias), layer(x, weight, bias)[:200])


@pytest.mark.parametrize("min_rows", [-1, 1.5, True, "4"])
def test_min_rows_must_be_a_non_negative_int(min_rows):
    with pytest.raises(ValueError, match="min_rows must be an int >= 0"):
        PackedLinear(min_rows)


@needs_onednn
def test_non_contiguous_input():
    weight, bias = _weights()
    x = torch.randn(6, 64)[:, ::2]
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(min_rows=0)(x, weight, bias), F.linear(x, weight, bias),
                                   rtol=1e-5, atol=1e-5)


@needs_onednn
def test_another_weight_or_an_invalidated_update_is_repacked():
    layer = PackedLinear(min_rows=0)
    first, _ = _weights(seed=0)
    second, _ = _weights(seed=2)
    x = torch.randn(3, 32)
    with torch.inference_mode():
        layer(x, first)
        torch.testing.assert_close(layer(x, second), F.linear(x, second), rtol=1e-5, atol=1e-5)
        first.copy_(second * 2)  # same tensor, new values: the engine calls update_weights -> invalidate
        layer(x, first)
        layer.invalidate()
        torch.testing.assert_close(layer(x, first), F.linear(x, second * 2), rtol=1e-5, atol=1e-5)


def test_unsupported_dtypes_and_grad_take_f_linear_exactly():
    layer = PackedLinear()
    weight, bias = _weights()
    x = torch.randn(4, 32)
    assert torch.equal(layer(x.double(), weight.double(), bias.double()), F.linear(x.double(), weight.double(),
                                                                                  bias.double()))
    trained = weight.clone().requires_grad_(True)
    out = layer(x, trained, bias)
    assert out.requires_grad and torch.equal(out, F.linear(x, trained, bias))
