"""The batched paged-attention kernel against a per-sequence dense reference."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu import (
    attention_mask,
    fill_kv_cache,
    gather_history,
    gather_kv,
    pack_batch,
    paged_attention,
)

BLOCK = 4

paged_attention_module = importlib.import_module("sagellm.accel.kernels.cpu.paged_attention")


def test_pack_batch_indices_exact():
    # seq0: 3 new tokens after 2 cached; seq1: 1 decode token after 5 cached
    q_seqlens = torch.tensor([3, 1])
    kv_seqlens = torch.tensor([5, 6])
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    assert packed.token_seq.tolist() == [0, 0, 0, 1]
    assert packed.token_pos.tolist() == [2, 3, 4, 5]
    assert packed.token_slot.tolist() == [0, 1, 2, 3]
    assert (packed.max_q_len, packed.max_kv_len) == (3, 6)


def test_fill_writes_each_token_to_its_block_slot():
    k_cache = torch.zeros(6, BLOCK, 1, 1)
    v_cache = torch.zeros(6, BLOCK, 1, 1)
    block_offsets = torch.tensor([[4, 1], [2, 5]])
    q_seqlens = torch.tensor([3, 1])
    kv_seqlens = torch.tensor([5, 6])
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    key = torch.tensor([10.0, 11.0, 12.0, 20.0]).view(4, 1, 1)
    fill_kv_cache(key, -key, k_cache, v_cache, block_offsets, packed)
    # seq0 positions 2,3 -> block 4 slots 2,3; position 4 -> block 1 slot 0; seq1 position 5 -> block 5 slot 1
    assert k_cache[4, 2:, 0, 0].tolist() == [10.0, 11.0]
    assert k_cache[1, 0, 0, 0].item() == 12.0
    assert k_cache[5, 1, 0, 0].item() == 20.0
    assert v_cache[5, 1, 0, 0].item() == -20.0
    assert int((k_cache != 0).sum()) == 4


def test_mask_is_causal_offset_by_history():
    mask = attention_mask(torch.tensor([2]), torch.tensor([4]), max_q_len=2, kv_len=4)[0, 0]
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_sliding_window_limits_lookback():
    mask = attention_mask(torch.tensor([1]), torch.tensor([5]), 1, 5, sliding_window=2)[0, 0]
    assert mask.tolist() == [[False, False, False, True, True]]


def _dense_reference(query, keys, values, history, scale):
    """softmax(QK^T) V for one sequence, with a causal mask offset by ``history``."""
    heads = query.shape[1]
    groups = heads // keys.shape[1]
    k = keys.repeat_interleave(groups, dim=1).transpose(0, 1)
    v = values.repeat_interleave(groups, dim=1).transpose(0, 1)
    q = query.transpose(0, 1)
    q_len, kv_len = q.shape[1], k.shape[1]
    allowed = torch.arange(kv_len)[None, :] <= (history + torch.arange(q_len))[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    return out.transpose(0, 1)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_mixed_batch_matches_dense_reference(dtype, atol):
    """Prefill with a cached prefix, fresh prefill and decode in one packed batch, with GQA."""
    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    histories = [5, 0, 9]  # tokens already in the cache
    new_tokens = [3, 6, 1]  # tokens of this step
    totals = [h + n for h, n in zip(histories, new_tokens)]
    num_blocks = 16
    k_cache = torch.zeros(num_blocks, BLOCK, kv_heads, dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    perm = torch.randperm(num_blocks)
    block_offsets = torch.stack([perm[0:4], perm[4:8], perm[8:12]])
    full_k = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    full_v = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    for seq, history in enumerate(histories):
        for pos in range(history):  # the cached prefix, written the slow obvious way
            block = block_offsets[seq, pos // BLOCK]
            k_cache[block, pos % BLOCK] = full_k[seq][pos]
            v_cache[block, pos % BLOCK] = full_v[seq][pos]
    query = [torch.randn(n, heads, dim, dtype=dtype) for n in new_tokens]
    q_seqlens = torch.tensor(new_tokens)
    kv_seqlens = torch.tensor(totals)
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    fill_kv_cache(
        torch.cat([k[h:] for k, h in zip(full_k, histories)]),
        torch.cat([v[h:] for v, h in zip(full_v, histories)]),
        k_cache, v_cache, block_offsets, packed,
    )
    out = paged_attention(
        torch.cat(query), k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed, scale=dim**-0.5
    )
    expected = torch.cat(
        [
            _dense_reference(q.float(), k.float(), v.float(), h, dim**-0.5)
            for q, k, v, h in zip(query, full_k, full_v, histories)
        ]
    )
    assert out.dtype == dtype
    assert out.shape == (sum(new_tokens), heads, dim)
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)
    assert gather_kv(k_cache, block_offsets, max(totals)).shape == (3, 12, kv_heads, dim)


def test_softcapping_path_matches_formula():
    torch.manual_seed(1)
    k_cache = torch.randn(2, BLOCK, 1, 4)
    v_cache = torch.randn(2, BLOCK, 1, 4)
    block_offsets = torch.tensor([[1, 0]])
    q_seqlens, kv_seqlens = torch.tensor([1]), torch.tensor([6])
    packed = pack_batch(q_seqlens, kv_seqlens, torch.tensor([0]))
    query = torch.randn(1, 1, 4)
    out = paged_attention(query, k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed, 0.5,
                          logit_softcapping=2.0)
    keys = gather_kv(k_cache, block_offsets, 6)[0, :6, 0]
    values = gather_kv(v_cache, block_offsets, 6)[0, :6, 0]
    scores = torch.tanh((keys @ query[0, 0]) * 0.5 / 2.0) * 2.0
    expected = torch.softmax(scores, dim=0) @ values
    torch.testing.assert_close(out[0, 0], expected)


def test_garbage_past_sequence_end_does_not_leak():
    """Unwritten cache slots may hold NaN/inf (torch.empty); they must not reach the output."""
    torch.manual_seed(2)
    k_cache = torch.full((4, BLOCK, 1, 4), float("nan"))
    v_cache = torch.full((4, BLOCK, 1, 4), float("inf"))
    block_offsets = torch.tensor([[2, 3], [1, 0]])
    q_seqlens, kv_seqlens = torch.tensor([3, 1]), torch.tensor([3, 6])
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    # seq1 has 5 cached tokens: positions 0..3 in block 1, position 4 in block 0
    k_cache[1], v_cache[1] = torch.randn(BLOCK, 1, 4), torch.randn(BLOCK, 1, 4)
    k_cache[0, 0], v_cache[0, 0] = torch.randn(1, 4), torch.randn(1, 4)
    key, value = torch.randn(4, 1, 4), torch.randn(4, 1, 4)
    fill_kv_cache(key, value, k_cache, v_cache, block_offsets, packed)
    out = paged_attention(torch.randn(4, 1, 4), k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed, 0.5)
    assert torch.isfinite(out).all()


def _scenario(histories, new_tokens, heads=4, kv_heads=2, dim=8, num_blocks=24, dtype=torch.float32, seed=0):
    """Caches full of NaN except what the sequences wrote, the dense reference, and the kernel inputs."""
    torch.manual_seed(seed)
    totals = [h + n for h, n in zip(histories, new_tokens)]
    k_cache = torch.full((num_blocks, BLOCK, kv_heads, dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    per_seq = max((t + BLOCK - 1) // BLOCK for t in totals) + 1  # one spare (unwritten) block each
    perm = torch.randperm(num_blocks - 1)[: per_seq * len(totals)] + 1  # block 0 stays NaN (padding target)
    block_offsets = perm.view(len(totals), per_seq).int()
    for b, t in enumerate(totals):  # LMDeploy pads a sequence's unused entries with block 0
        block_offsets[b, (t + BLOCK - 1) // BLOCK + 1:] = 0
    full_k = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    full_v = [torch.randn(t, kv_heads, dim, dtype=dtype) for t in totals]
    for seq, history in enumerate(histories):
        for pos in range(history):
            block = block_offsets[seq, pos // BLOCK]
            k_cache[block, pos % BLOCK] = full_k[seq][pos]
            v_cache[block, pos % BLOCK] = full_v[seq][pos]
    query = [torch.randn(n, heads, dim, dtype=dtype) for n in new_tokens]
    q_seqlens, kv_seqlens = torch.tensor(new_tokens), torch.tensor(totals)
    packed = pack_batch(q_seqlens, kv_seqlens, q_seqlens.cumsum(0) - q_seqlens)
    fill_kv_cache(torch.cat([k[h:] for k, h in zip(full_k, histories)]),
                  torch.cat([v[h:] for v, h in zip(full_v, histories)]), k_cache, v_cache, block_offsets, packed)
    expected = torch.cat([_dense_reference(q.float(), k.float(), v.float(), h, dim**-0.5)
                          for q, k, v, h in zip(query, full_k, full_v, histories)])
    args = (torch.cat(query), k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed)
    return args, expected


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_decode_path_matches_dense_reference_with_nan_garbage(dtype, atol):
    """One token per sequence, histories of 1..13 tokens, NaN in every unwritten slot and in padding block 0."""
    args, expected = _scenario([4, 0, 12, 7], [1, 1, 1, 1], dtype=dtype)
    assert args[-1].is_decode
    out = paged_attention(*args, scale=8**-0.5)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_fresh_prefill_path_matches_dense_reference_with_nan_garbage(dtype, atol):
    args, expected = _scenario([0, 0, 0], [5, 1, 9], dtype=dtype)
    assert args[-1].no_history and not args[-1].is_decode
    out = paged_attention(*args, scale=8**-0.5)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("call_pairs", [0, 10**9])
def test_fresh_prefill_one_call_per_sequence_or_padded_gives_the_same(call_pairs, monkeypatch):
    monkeypatch.setattr(paged_attention_module, "PREFILL_CALL_PAIRS", call_pairs)
    assert paged_attention_module._padding_outweighs_calls([5, 1, 9], 9) is (call_pairs == 0)
    args, expected = _scenario([0, 0, 0], [5, 1, 9])
    torch.testing.assert_close(paged_attention(*args, scale=8**-0.5), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("lengths, threads, per_sequence", [
    ([230, 245, 240], 1, True),  # measured 1.71 ms per sequence against 2.07 on the grid
    ([230, 245, 240], 2, True),  # 0.97 against 1.88
    ([50, 60, 400, 100], 1, True),
    ([60, 64] * 8, 1, True),  # 1.28 against 1.78
    ([60, 64] * 8, 2, False),  # 0.91 against 0.80: the calls do not get faster with threads
    ([18, 22] * 8, 1, False),  # 0.47 against 0.34
    ([160], 1, False),  # one sequence is its own grid
])
def test_fresh_prefill_counts_the_grid_copies_and_the_threads(lengths, threads, per_sequence):
    assert paged_attention_module._padding_outweighs_calls(lengths, max(lengths), copies_grid=True,
                                                           threads=threads) is per_sequence


def test_grid_rows_cost_nothing_extra_when_the_lengths_are_equal():
    """Equal lengths: the packed tokens are the grid, nothing is copied, so the grid wins."""
    assert not paged_attention_module._padding_outweighs_calls([64] * 16, 64, copies_grid=True)


def test_fresh_prefill_of_equal_lengths_needs_no_padding():
    args, expected = _scenario([0, 0], [6, 6])
    torch.testing.assert_close(paged_attention(*args, scale=8**-0.5), expected, atol=2e-6, rtol=0)


def test_prefix_prefill_path_matches_dense_reference_with_nan_garbage():
    args, expected = _scenario([5, 0, 8], [3, 6, 1])
    out = paged_attention(*args, scale=8**-0.5)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_given_history_is_used_instead_of_the_cache():
    args, _ = _scenario([4, 9], [1, 1])
    query, k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed = args
    keys = gather_history(k_cache, block_offsets, kv_seqlens, packed).transpose(1, 2)
    values = gather_history(v_cache, block_offsets, kv_seqlens, packed).transpose(1, 2)
    expected = paged_attention(*args, scale=0.3)
    nan_cache = torch.full_like(k_cache, float("nan"))  # proves the caches are not read
    out = paged_attention(query, nan_cache, nan_cache, block_offsets, q_seqlens, kv_seqlens, packed, scale=0.3,
                          history=(keys.contiguous(), values.contiguous()))
    assert torch.equal(out, expected)


def test_sinks_path_with_grouped_heads_matches_formula():
    torch.manual_seed(3)
    args, _ = _scenario([3], [1], heads=2, kv_heads=1, dim=4)
    query, k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, packed = args
    sinks = torch.tensor([0.5, -1.0])
    out = paged_attention(*args, scale=0.5, sinks=sinks)
    keys = gather_history(k_cache, block_offsets, kv_seqlens, packed)[0, :, 0]
    values = gather_history(v_cache, block_offsets, kv_seqlens, packed)[0, :, 0]
    for head in range(2):
        scores = torch.cat([keys @ query[0, head] * 0.5, sinks[head:head + 1]])
        expected = torch.softmax(scores, dim=0)[:-1] @ values
        torch.testing.assert_close(out[0, head], expected)


def _packed_new_kv(args):
    """The packed K and V of a scenario's new tokens, read back from its caches."""
    _, k_cache, v_cache, block_offsets, q_seqlens, kv_seqlens, _ = args
    rows = [(int(block_offsets[seq, pos // BLOCK]), pos % BLOCK)
            for seq, (new, total) in enumerate(zip(q_seqlens.tolist(), kv_seqlens.tolist()))
            for pos in range(total - new, total)]
    return torch.stack([k_cache[b, s] for b, s in rows]), torch.stack([v_cache[b, s] for b, s in rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("call_pairs", [0, 10**9])
def test_fresh_prefill_over_the_steps_own_kv_equals_reading_the_cache(dtype, call_pairs, monkeypatch):
    """Per sequence and on the padded grid alike: bitwise the same output, and the caches are not read."""
    monkeypatch.setattr(paged_attention_module, "PREFILL_CALL_PAIRS", call_pairs)
    args, _ = _scenario([0, 0, 0], [5, 1, 9], dtype=dtype)
    expected = paged_attention(*args, scale=8**-0.5)
    query, k_cache, _, block_offsets, q_seqlens, kv_seqlens, packed = args
    nan_cache = torch.full_like(k_cache, float("nan"))
    out = paged_attention(query, nan_cache, nan_cache, block_offsets, q_seqlens, kv_seqlens, packed,
                          scale=8**-0.5, new_kv=_packed_new_kv(args))
    assert out.dtype == dtype and torch.equal(out, expected)


def test_new_kv_is_not_enough_when_a_sequence_has_history():
    """With cached history the keys come from the caches whatever ``new_kv`` holds."""
    args, expected = _scenario([5, 0, 8], [3, 6, 1])
    key, value = _packed_new_kv(args)
    out = paged_attention(*args, scale=8**-0.5, new_kv=(torch.full_like(key, float("nan")), value))
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
