"""Quantized paged KV (quant_policy 8 / 4, fp8 as policy 8 in float8): block layout, scale/zero placement,
attention over decoded history."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu import (
    KVQuant,
    dequantize_kv,
    fill_kv_cache,
    gather_dequantized,
    pack_batch,
    paged_attention,
    quantize_kv,
)
from sagellm.accel.quantization import dequantize_fp8, fp8_scale_from_amax, pack_int4, quantize_fp8, quantize_rows

BLOCK = 4
POLICIES = [8, 4]
POLICY_DTYPE = {8: "int8", 4: "int4"}
FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _caches(num_blocks, kv_heads, dim, policy, scale_dtype=torch.float32, fill=0):
    """uint8 K/V caches + scale/zero tensors shaped as LMDeploy's CacheEngine allocates them."""
    packed_dim = dim // 2 if policy == 4 else dim
    k_cache = torch.full((num_blocks, BLOCK, kv_heads, packed_dim), fill, dtype=torch.uint8)
    v_cache = torch.full_like(k_cache, fill)
    k_sz = torch.full((num_blocks, BLOCK, kv_heads, 2), float("nan"), dtype=scale_dtype)
    v_sz = torch.full_like(k_sz, float("nan"))
    return k_cache, v_cache, KVQuant(policy, k_sz, v_sz)


@pytest.mark.parametrize("policy", POLICIES)
def test_fill_places_codes_and_scale_zero_per_token_per_head(policy):
    k_cache, v_cache, quant = _caches(6, 2, 8, policy)
    block_offsets = torch.tensor([[4, 1], [2, 5]])
    q_seqlens, kv_seqlens = torch.tensor([3, 1]), torch.tensor([5, 6])
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    torch.manual_seed(0)
    key, value = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    fill_kv_cache(key, value, k_cache, v_cache, block_offsets, packed, quant=quant)

    bits = 8 if policy == 8 else 4
    codes, scale, zero = quantize_rows(key, bits)
    if policy == 4:
        codes = pack_int4(codes)
    # seq0 positions 2,3,4 -> (block 4, slots 2,3), (block 1, slot 0); seq1 position 5 -> (block 5, slot 1)
    where = [(4, 2), (4, 3), (1, 0), (5, 1)]
    for token, (block, slot) in enumerate(where):
        assert torch.equal(k_cache[block, slot], codes[token])
        assert torch.equal(quant.k_scales_zeros[block, slot, :, 0], scale[token])
        assert torch.equal(quant.k_scales_zeros[block, slot, :, 1], zero[token])
        decoded_v = dequantize_kv(v_cache[block, slot], quant.v_scales_zeros[block, slot], POLICY_DTYPE[policy],
                                  torch.float64)
        v_scale = quant.v_scales_zeros[block, slot, :, :1].double()
        assert bool(((decoded_v - value[token].double()).abs() <= v_scale * (0.5 + 2e-5)).all())
    written = {(b, s) for b, s in where}
    untouched = [(b, s) for b in range(6) for s in range(BLOCK) if (b, s) not in written]
    assert all(torch.isnan(quant.k_scales_zeros[b, s]).all() for b, s in untouched)
    assert k_cache.shape[-1] == (4 if policy == 4 else 8)


@pytest.mark.parametrize("policy", POLICIES)
def test_quantize_kv_roundtrip_shapes(policy):
    states = torch.randn(5, 3, 16)
    bits = 8 if policy == 8 else 4
    codes, sz = quantize_kv(states, POLICY_DTYPE[policy], torch.bfloat16)
    assert codes.shape == (5, 3, 16 if bits == 8 else 8) and codes.dtype == torch.uint8
    assert sz.shape == (5, 3, 2) and sz.dtype == torch.bfloat16
    assert dequantize_kv(codes, sz, POLICY_DTYPE[policy], torch.float32).shape == states.shape


def _dense_reference(query, keys, values, history, scale):
    heads = query.shape[1]
    groups = heads // keys.shape[1]
    k = keys.repeat_interleave(groups, dim=1).transpose(0, 1)
    v = values.repeat_interleave(groups, dim=1).transpose(0, 1)
    q = query.transpose(0, 1)
    allowed = torch.arange(k.shape[1])[None, :] <= (history + torch.arange(q.shape[1]))[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale).transpose(0, 1)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_mixed_batch_attends_over_decoded_history(policy, dtype, atol):
    """Cached prefix + prefill + decode with GQA: equals dense attention over the quantized-then-decoded K/V.

    Caches start with NaN scales and 0xFF codes: slots no sequence wrote must not leak into the output.
    """
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    histories, new_tokens = [5, 0, 9], [3, 6, 1]
    totals = [h + n for h, n in zip(histories, new_tokens)]
    k_cache, v_cache, quant = _caches(16, kv_heads, dim, policy, scale_dtype=dtype, fill=255)
    block_offsets = torch.randperm(16)[:12].view(3, 4)
    full_k = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    full_v = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]

    # the cached prefixes, written by an earlier step
    prefix_q = torch.tensor(histories)
    prefix = pack_batch(prefix_q, prefix_q, prefix_q.cumsum(0) - prefix_q)
    fill_kv_cache(torch.cat([k[:h] for k, h in zip(full_k, histories)]),
                  torch.cat([v[:h] for v, h in zip(full_v, histories)]),
                  k_cache, v_cache, block_offsets, prefix, quant=quant)
    # this step
    q_seqlens, kv_seqlens = torch.tensor(new_tokens), torch.tensor(totals)
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    query = [torch.randn(n, heads, dim, dtype=dtype) for n in new_tokens]
    fill_kv_cache(torch.cat([k[h:] for k, h in zip(full_k, histories)]),
                  torch.cat([v[h:] for v, h in zip(full_v, histories)]),
                  k_cache, v_cache, block_offsets, packed, quant=quant)
    out = paged_attention(torch.cat(query), k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed,
                          scale=dim**-0.5, quant=quant)

    def decoded(states):  # what the cache holds, decoded: the same per-token-head grid
        codes, sz = quantize_kv(states, POLICY_DTYPE[policy], dtype)
        return dequantize_kv(codes, sz, POLICY_DTYPE[policy], torch.float32)

    expected = torch.cat([
        _dense_reference(q.float(), decoded(k), decoded(v), h, dim**-0.5)
        for q, k, v, h in zip(query, full_k, full_v, histories)
    ])
    assert out.dtype == dtype and out.shape == (sum(new_tokens), heads, dim)
    assert bool(torch.isfinite(out.float()).all())
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)

    # and close to attention over the float K/V (quantization error only)
    float_ref = torch.cat([
        _dense_reference(q.float(), k.float(), v.float(), h, dim**-0.5)
        for q, k, v, h in zip(query, full_k, full_v, histories)
    ])
    tolerance = {8: 0.05, 4: 0.6}[policy]
    assert float((out.float() - float_ref).abs().max()) < tolerance


def test_gather_zeroes_positions_past_each_sequence():
    k_cache, _, quant = _caches(4, 1, 4, 8, fill=7)
    quant.k_scales_zeros.fill_(float("nan"))
    quant.k_scales_zeros[0, :2] = torch.tensor([2.0, 1.0])  # seq0 wrote two tokens: (7 - 1) * 2 = 12
    block_offsets = torch.tensor([[0, 3]])
    kv_seqlens = torch.tensor([2])
    packed = pack_batch(torch.tensor([1]), kv_seqlens, torch.tensor([0]))
    out = gather_dequantized(k_cache, quant.k_scales_zeros, "int8", block_offsets, kv_seqlens, packed, torch.float32)
    assert out.shape == (1, BLOCK, 1, 4)
    assert out[0, :2].unique().tolist() == [12.0]
    assert out[0, 2:].abs().sum().item() == 0.0


def test_kvquant_validation():
    sz = torch.zeros(2, BLOCK, 1, 2)
    with pytest.raises(ValueError, match="quant_policy: got 2"):
        KVQuant(2, sz, sz)
    with pytest.raises(ValueError, match=r"k_scales_zeros: got shape \(2, 4, 1\)"):
        KVQuant(8, sz[..., 0], sz)
    assert KVQuant(4, sz, sz).bits == 4


# --------------------------------------------------------------------------- fp8 (policy 8, float8 storage)


def _fp8_caches(num_blocks, kv_heads, dim, name, scale_dtype=torch.float32):
    """float8 K/V caches whose every byte is 0xFF (NaN in both formats) + NaN scale/zero tensors."""
    k_cache = torch.full((num_blocks, BLOCK, kv_heads, dim), 255, dtype=torch.uint8).view(FP8[name])
    v_cache = k_cache.clone()
    k_sz = torch.full((num_blocks, BLOCK, kv_heads, 2), float("nan"), dtype=scale_dtype)
    return k_cache, v_cache, KVQuant(8, k_sz, torch.full_like(k_sz, float("nan")), cache_dtype=FP8[name])


@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_fp8_fill_stores_data_and_symmetric_scale(name, scale_dtype):
    k_cache, v_cache, quant = _fp8_caches(6, 2, 8, name, scale_dtype)
    block_offsets = torch.tensor([[4, 1], [2, 5]])
    q_seqlens, kv_seqlens = torch.tensor([3, 1]), torch.tensor([5, 6])
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    torch.manual_seed(0)
    key, value = torch.randn(4, 2, 8).to(scale_dtype), torch.randn(4, 2, 8).to(scale_dtype)
    key[1, 0] = 0.0  # an all-zero vector: scale 1, data 0
    fill_kv_cache(key, value, k_cache, v_cache, block_offsets, packed, quant=quant)

    where = [(4, 2), (4, 3), (1, 0), (5, 1)]
    for states, cache, scales_zeros in ((key, k_cache, quant.k_scales_zeros), (value, v_cache, quant.v_scales_zeros)):
        scale = fp8_scale_from_amax(states.abs().amax(dim=-1), name, scale_dtype)
        data = quantize_fp8(states, scale[..., None], name)
        for token, (block, slot) in enumerate(where):
            assert cache[block, slot].dtype == FP8[name]
            assert torch.equal(cache[block, slot].view(torch.uint8), data[token].view(torch.uint8))
            assert torch.equal(scales_zeros[block, slot, :, 0], scale[token])
            assert scales_zeros[block, slot, :, 1].tolist() == [0.0, 0.0]
            read_back = dequantize_kv(cache[block, slot], scales_zeros[block, slot], name, torch.float32)
            assert torch.equal(read_back, dequantize_fp8(data[token], scale[token][:, None]))
    assert quant.k_scales_zeros[4, 3, 0].tolist() == [1.0, 0.0]
    assert k_cache[4, 3, 0].float().abs().sum().item() == 0.0
    written = set(where)
    untouched = [(b, s) for b in range(6) for s in range(BLOCK) if (b, s) not in written]
    assert all(torch.isnan(quant.k_scales_zeros[b, s]).all() for b, s in untouched)
    assert all((k_cache[b, s].view(torch.uint8) == 255).all() for b, s in untouched)


def test_fp8_largest_magnitude_lands_on_the_format_maximum():
    states = torch.tensor([[[1.0, -3.5, 0.25, 2.0]]])
    data, sz = quantize_kv(states, "fp8_e4m3", torch.float32)
    assert sz.tolist() == [[[3.5 / 448, 0.0]]]
    assert data.float().tolist() == [[[128.0, -448.0, 32.0, 256.0]]]


@pytest.mark.parametrize("name", list(FP8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_attention_equals_attention_over_the_dequantized_float_cache(name, dtype):
    """Cached prefix + prefill + decode with GQA, fp8 caches starting as NaN bytes: bit-identical to the
    float path over a cache holding the dequantized values."""
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    histories, new_tokens = [5, 0, 9], [3, 6, 1]
    totals = [h + n for h, n in zip(histories, new_tokens)]
    k_cache, v_cache, quant = _fp8_caches(16, kv_heads, dim, name, scale_dtype=dtype)
    block_offsets = torch.randperm(16)[:12].view(3, 4)
    full_k = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    full_v = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    prefix_q = torch.tensor(histories)
    prefix = pack_batch(prefix_q, prefix_q, prefix_q.cumsum(0) - prefix_q)
    fill_kv_cache(torch.cat([k[:h] for k, h in zip(full_k, histories)]),
                  torch.cat([v[:h] for v, h in zip(full_v, histories)]),
                  k_cache, v_cache, block_offsets, prefix, quant=quant)
    q_seqlens, kv_seqlens = torch.tensor(new_tokens), torch.tensor(totals)
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    query = torch.randn(sum(new_tokens), heads, dim, dtype=dtype)
    fill_kv_cache(torch.cat([k[h:] for k, h in zip(full_k, histories)]),
                  torch.cat([v[h:] for v, h in zip(full_v, histories)]),
                  k_cache, v_cache, block_offsets, packed, quant=quant)
    out = paged_attention(query, k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed,
                          scale=dim**-0.5, quant=quant)

    float_k = dequantize_kv(k_cache, quant.k_scales_zeros, name, dtype)  # NaN where never written
    float_v = dequantize_kv(v_cache, quant.v_scales_zeros, name, dtype)
    expected = paged_attention(query, float_k, float_v, block_offsets, q_seqlens, kv_seqlens, packed,
                               scale=dim**-0.5)
    assert out.dtype == dtype and bool(torch.isfinite(out.float()).all())
    assert torch.equal(out, expected)

    # and close to attention over the float K/V: fp8 rounding only (measured max error e4m3 0.045 / 0.040,
    # e5m2 0.152 / 0.148 in float32 / bf16: one mantissa bit less; int8's per-token grid is finer than both)
    float_ref = torch.cat([
        _dense_reference(q.float(), k.float(), v.float(), h, dim**-0.5)
        for q, k, v, h in zip(query.split(new_tokens), full_k, full_v, histories)
    ])
    tolerance = {"fp8_e4m3": 0.07, "fp8_e5m2": 0.25}[name]
    assert float((out.float() - float_ref).abs().max()) < tolerance


def test_fp8_gather_zeroes_positions_past_each_sequence():
    k_cache, _, quant = _fp8_caches(4, 1, 4, "fp8_e4m3")  # NaN bytes everywhere
    k_cache[0, :2] = torch.tensor([1.5, -2.0, 0.0, 448.0]).to(torch.float8_e4m3fn)
    quant.k_scales_zeros[0, :2] = torch.tensor([2.0, 0.0])
    block_offsets = torch.tensor([[0, 3]])
    kv_seqlens = torch.tensor([2])
    packed = pack_batch(torch.tensor([1]), kv_seqlens, torch.tensor([0]))
    out = gather_dequantized(k_cache, quant.k_scales_zeros, "fp8_e4m3", block_offsets, kv_seqlens, packed,
                             torch.float32)
    assert out[0, :2, 0].tolist() == [[3.0, -4.0, 0.0, 896.0]] * 2
    assert out[0, 2:].abs().sum().item() == 0.0


def test_kvquant_format_follows_the_cache_dtype():
    sz = torch.zeros(2, BLOCK, 1, 2)
    assert [KVQuant(8, sz, sz).kv_dtype, KVQuant(4, sz, sz).kv_dtype] == ["int8", "int4"]
    assert KVQuant(8, sz, sz, cache_dtype=torch.float8_e4m3fn).kv_dtype == "fp8_e4m3"
    assert KVQuant(8, sz, sz, cache_dtype=torch.float8_e5m2).kv_dtype == "fp8_e5m2"
    with pytest.raises(ValueError) as err:
        KVQuant(4, sz, sz, cache_dtype=torch.float8_e4m3fn)
    assert str(err.value).startswith(
        "quantized KV cache: got quant_policy 4 with cache dtype torch.float8_e4m3fn; accepted (quant_policy, "
        "cache dtype): (8, torch.uint8) = int8, (4, torch.uint8) = int4, (8, torch.float8_e4m3fn) = fp8_e4m3, "
        "(8, torch.float8_e5m2) = fp8_e5m2"
    )
    with pytest.raises(ValueError, match="got quant_policy 8 with cache dtype torch.int8"):
        KVQuant(8, sz, sz, cache_dtype=torch.int8)
    with pytest.raises(ValueError, match="kv_format: name got 8; accepted: one of 'int8', 'int4', 'fp8_e4m3'"):
        quantize_kv(torch.zeros(1, 1, 2), 8, torch.float32)
