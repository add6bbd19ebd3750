"""The native (C++) decode attention against the torch paged-attention kernel, and its build/load path."""

from __future__ import annotations

import pytest
import torch

from sagellm.accel.kernels.cpu import native
from sagellm.accel.kernels.cpu import pack_batch, paged_attention
from sagellm.accel.kernels.cpu.native.attention import decode_supported, paged_decode_attention

BLOCK = 4
#: head sizes of the kernel's generic path (8) and of its vectorized one (64, 128, 256)
HEAD_DIMS = [8, 64, 128, 256]

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C++ compiler on this machine")


@pytest.fixture(scope="module")
def kernels():
    if native.compiler() is None:
        pytest.skip("no C++ compiler on this machine")
    return native.NativeKernels(native.build())  # a machine with a compiler must build them


def _decode_case(seed, lengths, heads=4, kv_heads=2, dim=8, v_dim=None, dtype=torch.float32):
    """A decode batch whose histories sit in shuffled blocks of a shared cache."""
    torch.manual_seed(seed)
    v_dim = v_dim or dim
    batch = len(lengths)
    width = max(-(-n // BLOCK) for n in lengths) + 1  # one spare column, as LMDeploy's tables have
    blocks = batch * width + 3
    k_cache = torch.randn(blocks, BLOCK, kv_heads, dim).to(dtype)
    v_cache = torch.randn(blocks, BLOCK, kv_heads, v_dim).to(dtype)
    table = torch.randperm(blocks)[: batch * width].view(batch, width).to(torch.int32)
    kv_seqlens = torch.tensor(lengths, dtype=torch.int32)
    query = torch.randn(batch, heads, dim).to(dtype)
    return query, k_cache, v_cache, table, kv_seqlens


def _torch_decode(query, k_cache, v_cache, table, kv_seqlens, **kwargs):
    q_seqlens = torch.ones_like(kv_seqlens)
    packed = pack_batch(q_seqlens, kv_seqlens, torch.arange(kv_seqlens.numel()))
    return paged_attention(query, k_cache, v_cache, table, q_seqlens, kv_seqlens, packed, **kwargs)


@pytest.mark.parametrize("dim", HEAD_DIMS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lengths", [[1], [5, 1, 17, 4], [33, 2, 8, 8, 1, 40]])
def test_matches_torch_kernel_float32(kernels, lengths, threads, dim):
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(0, lengths, dim=dim)
    got = paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens, scale=0.3, threads=threads)
    want = _torch_decode(query, k_cache, v_cache, table, kv_seqlens, scale=0.3)
    assert got.shape == (len(lengths), 4, dim) and got.dtype == torch.float32
    # rounding grows with the dot products' length (sums in another order than torch's)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * max(1, dim // 64))


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 1), (6, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_long_history_matches_for_every_head_grouping(kernels, heads, kv_heads, threads):
    """One sequence: its KV heads are the work the threads share (and multi-query, MHA, odd groups)."""
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(7, [301], heads=heads, kv_heads=kv_heads, dim=64)
    got = paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens, scale=0.125, threads=threads)
    want = _torch_decode(query, k_cache, v_cache, table, kv_seqlens, scale=0.125)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [8, 64])
@pytest.mark.parametrize("dtype, atol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_half_caches_read_like_the_torch_kernel(kernels, dtype, atol, dim):
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(1, [9, 3, 21], dim=dim, dtype=dtype)
    got = paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens, scale=0.35)
    want = _torch_decode(query, k_cache, v_cache, table, kv_seqlens, scale=0.35)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol)


@pytest.mark.parametrize("dim, v_dim", [(8, 12), (64, 64), (256, 256)])
def test_sliding_window_softcapping_sinks_and_wide_values(kernels, dim, v_dim):
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(2, [13, 2, 30], heads=6, kv_heads=3, dim=dim,
                                                             v_dim=v_dim)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5, -0.5])
    options = dict(scale=0.4, sliding_window=7, logit_softcapping=2.5, sinks=sinks)
    got = paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens, **options)
    want = _torch_decode(query, k_cache, v_cache, table, kv_seqlens, **options)
    assert got.shape == (3, 6, v_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [4, 64])
def test_softmax_extremes_stay_finite(kernels, dim):
    """Scores far apart (exp underflow) and equal scores (uniform weights) both come out right."""
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(3, [6], heads=2, kv_heads=1, dim=dim)
    query = query * 1e3
    got = paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens, scale=1.0)
    want = _torch_decode(query, k_cache, v_cache, table, kv_seqlens, scale=1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    uniform = paged_decode_attention(kernels, torch.zeros_like(query), k_cache, v_cache, table, kv_seqlens, scale=1.0)
    rows = table[0, :2].long()
    mean = v_cache[rows].reshape(-1, 1, dim)[:6].mean(0)
    torch.testing.assert_close(uniform[0], mean.expand(2, dim), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dim", [8, 64])
def test_strided_cache_views_are_read_in_place(kernels, dim):
    """A cache that is a view (e.g. K and V halves of one tensor) needs no copy."""
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(4, [7, 11], dim=dim)
    both = torch.stack([k_cache, v_cache], dim=3)  # [blocks, block, kv_heads, 2, dim]
    k_view, v_view = both[:, :, :, 0], both[:, :, :, 1]
    got = paged_decode_attention(kernels, query, k_view, v_view, table, kv_seqlens, scale=0.3)
    want = _torch_decode(query, k_cache, v_cache, table, kv_seqlens, scale=0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bad_shapes_raise_instead_of_reading_out_of_bounds(kernels):
    query, k_cache, v_cache, table, kv_seqlens = _decode_case(5, [9, 3])
    with pytest.raises(ValueError, match="needs 3 blocks, the block table has 1 columns"):
        paged_decode_attention(kernels, query, k_cache, v_cache, table[:, :1], kv_seqlens, scale=1.0)
    with pytest.raises(ValueError, match="2 queries but kv_seqlens"):
        paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens[:1], scale=1.0)
    with pytest.raises(ValueError, match="3 sinks for 4 heads"):
        paged_decode_attention(kernels, query, k_cache, v_cache, table, kv_seqlens, scale=1.0, sinks=torch.zeros(3))
    codes = k_cache.to(torch.uint8)
    assert not decode_supported(query, codes, codes)
    with pytest.raises(ValueError, match="check decode_supported"):
        paged_decode_attention(kernels, query, codes, codes, table, kv_seqlens, scale=1.0)


@needs_compiler
def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(tmp_path))
    first = native.build()
    assert first.is_relative_to(tmp_path / "kernels") and first.exists()
    mtime = first.stat().st_mtime_ns
    assert native.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    assert native.NativeKernels(first).path == first
    monkeypatch.setattr(native, "ABI_VERSION", native.ABI_VERSION + 1)
    assert native.library_path(native.compiler()) != first  # another key, another folder
    with pytest.raises(native.NativeBuildError, match="C ABI version 2, this sagellm needs 3"):
        native.NativeKernels(first)


def test_missing_or_broken_compiler_falls_back_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    native.reset()
    try:
        assert native.native_kernels() is None
        status = native.native_status()
        assert not status.available and "does not run" in status.reason and "SAGELLM_CPU_NATIVE_KERNELS=0" in status.reason
    finally:
        native.reset()
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler found"):
        native.build()


@needs_compiler
def test_compile_errors_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(tmp_path))
    sources = tmp_path / "src"
    sources.mkdir()
    for name in native.SOURCES:
        (sources / name).write_text("this is not C++\n")
    monkeypatch.setattr(native, "source_dir", lambda: sources)
    with pytest.raises(native.NativeBuildError, match="building the native cpu kernels failed") as failure:
        native.build()
    assert "this is not C++" in str(failure.value) or "error" in str(failure.value)
    assert not list((tmp_path / "kernels").rglob("*.so"))  # no half-written library left behind


def _default_rms_norm(x, weight, eps, residual=None):
    """LMDeploy's default RMSNorm, op for op."""
    if residual is not None:
        x = x + residual
        residual = x
    variance = x.pow(2).mean(-1, keepdim=True)
    out = weight * (x * torch.rsqrt(variance + eps))
    return out if residual is None else (out, residual)


def test_rms_norm_matches_the_torch_ops(kernels):
    from sagellm.accel.kernels.cpu.native.ops import rms_norm

    torch.manual_seed(6)
    x = torch.randn(1, 5, 48) * 3
    residual = torch.randn(1, 5, 48)
    weight = torch.randn(48)
    torch.testing.assert_close(rms_norm(kernels, x, weight, 1e-6), _default_rms_norm(x, weight, 1e-6),
                               rtol=2e-6, atol=1e-6)
    out, summed = rms_norm(kernels, x, weight, 1e-5, residual)
    want_out, want_sum = _default_rms_norm(x, weight, 1e-5, residual)
    assert torch.equal(summed, want_sum)  # the residual sum is one exact add
    torch.testing.assert_close(out, want_out, rtol=2e-6, atol=1e-6)
    strided = torch.randn(5, 96)[:, :48]  # rows 96 apart
    torch.testing.assert_close(rms_norm(kernels, strided, weight, 1e-6), _default_rms_norm(strided, weight, 1e-6),
                               rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="check rms_norm_fits"):
        rms_norm(kernels, x, torch.ones(47), 1e-6)


def test_rotary_rounds_exactly_like_lmdeploys_default(kernels):
    from lmdeploy.pytorch.backends.default.apply_rotary_emb import DefaultApplyRotaryEmbImpl

    from sagellm.accel.kernels.cpu.native.ops import rotary_inplace

    torch.manual_seed(7)
    qkv = torch.randn(6, 4 + 2 + 2, 16)
    query, key = qkv[:, :4], qkv[:, 4:6]  # views of one projection output, as LMDeploy's split gives
    angles = torch.randn(6, 8)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    want_q, want_k = DefaultApplyRotaryEmbImpl().forward(query.clone(), key.clone(), cos, sin)
    got_q, got_k = rotary_inplace(kernels, query, cos, sin), rotary_inplace(kernels, key, cos, sin)
    assert got_q.data_ptr() == qkv.data_ptr()  # in place
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    with pytest.raises(ValueError, match="check rotary_fits"):
        rotary_inplace(kernels, query, cos[:5], sin[:5])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_write_rows_matches_the_torch_fill(kernels, dtype):
    from sagellm.accel.kernels.cpu import fill_kv_cache
    from sagellm.accel.kernels.cpu.native.ops import rows_writable, token_slots_checked, write_rows
    from sagellm.accel.kernels.cpu.packed_batch import token_cache_slots

    torch.manual_seed(8)
    table = torch.tensor([[4, 1, 0], [2, 5, 3]])
    kv_seqlens = torch.tensor([6, 9])
    packed = pack_batch(torch.ones(2, dtype=torch.long), kv_seqlens, torch.arange(2))
    qkv = torch.randn(2, 4 + 2 + 2, 8).to(dtype)
    key, value = qkv[:, 4:6], qkv[:, 6:]  # views into one projection output, as LMDeploy splits it
    want_k, want_v = torch.zeros(6, BLOCK, 2, 8, dtype=dtype), torch.zeros(6, BLOCK, 2, 8, dtype=dtype)
    fill_kv_cache(key, value, want_k, want_v, table, packed)
    got_k, got_v = torch.zeros_like(want_k), torch.zeros_like(want_v)
    assert rows_writable(key, got_k) and rows_writable(value, got_v)
    slots = token_slots_checked(token_cache_slots(packed, table, BLOCK), got_k)
    assert slots.tolist() == [1 * BLOCK + 1, 3 * BLOCK + 0]  # seq 0 position 5, seq 1 position 8
    write_rows(kernels, key, got_k, slots)
    write_rows(kernels, value, got_v, slots)
    assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
    assert not rows_writable(key.float() if dtype != torch.float32 else key.double(), got_k)  # dtypes must agree
    assert not rows_writable(key.transpose(1, 2), got_k.transpose(2, 3))  # a token's row must be contiguous
    with pytest.raises(ValueError, match="outside the cache's 24"):
        token_slots_checked(torch.tensor([3, 24]), got_k)
    with pytest.raises(ValueError, match="check rows_writable"):
        write_rows(kernels, key, got_k, slots.to(torch.int32))
