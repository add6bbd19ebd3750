"""Index arithmetic shared by every layer of a step: flat slots, safe history slots, memoized masks."""

from __future__ import annotations

import torch

from sagellm.accel.kernels.cpu.packed_batch import (
    attention_bias,
    attention_mask,
    history_slots,
    history_valid,
    pack_batch,
    token_cache_slots,
)

BLOCK = 4


def _pack(q, kv):
    q, kv = torch.tensor(q), torch.tensor(kv)
    return q, kv, pack_batch(q, kv, q.cumsum(0) - q)


def test_decode_batch_is_flagged_and_indexed_without_repeat():
    _, _, packed = _pack([1, 1, 1], [5, 1, 9])
    assert packed.is_decode and not packed.no_history
    assert packed.token_seq.tolist() == [0, 1, 2]
    assert packed.token_pos.tolist() == [4, 0, 8]
    assert packed.token_slot.tolist() == [0, 1, 2]
    assert (packed.max_q_len, packed.max_kv_len) == (1, 9)


def test_fresh_prefill_is_flagged_and_prefix_prefill_is_not():
    assert _pack([3, 2], [3, 2])[2].no_history
    assert not _pack([3, 2], [3, 2])[2].is_decode
    prefix = _pack([3, 2], [5, 2])[2]
    assert not prefix.no_history and not prefix.is_decode


def test_token_cache_slots_are_flat_block_slots():
    _, _, packed = _pack([3, 1], [5, 6])
    block_offsets = torch.tensor([[4, 1], [2, 5]])
    # seq0 positions 2,3,4 -> block 4 slots 2,3 then block 1 slot 0; seq1 position 5 -> block 5 slot 1
    assert token_cache_slots(packed, block_offsets, BLOCK).tolist() == [18, 19, 4, 21]


def test_history_slots_point_padding_at_the_sequence_start():
    _, kv, packed = _pack([1, 1], [6, 3])
    block_offsets = torch.tensor([[4, 1], [2, 0]])  # seq1 uses one block; its second entry is padding
    slots = history_slots(packed, block_offsets, kv, BLOCK).view(2, 6)
    assert slots[0].tolist() == [16, 17, 18, 19, 4, 5]
    # positions 3..5 of seq1 do not exist: they read seq1's position 0 (slot 8), never block 0
    assert slots[1].tolist() == [8, 9, 10, 8, 8, 8]
    assert history_valid(packed, kv).tolist() == [[True] * 6, [True] * 3 + [False] * 3]


def test_derived_tensors_are_computed_once_per_step():
    q, kv, packed = _pack([1, 1], [6, 3])
    block_offsets = torch.tensor([[4, 1], [2, 0]])
    assert history_slots(packed, block_offsets, kv, BLOCK) is history_slots(packed, block_offsets, kv, BLOCK)
    bias = attention_bias(packed, q, kv, torch.float32)
    assert attention_bias(packed, q, kv, torch.float32) is bias
    assert attention_bias(packed, q, kv, torch.bfloat16) is not bias


def test_bias_is_the_mask_as_zero_or_minus_inf():
    q, kv, packed = _pack([2, 1], [4, 3])
    mask = attention_mask(q, kv, packed.max_q_len, packed.max_kv_len)
    bias = attention_bias(packed, q, kv, torch.float32)
    assert torch.equal(bias == 0, mask)
    assert torch.equal(torch.isneginf(bias), ~mask)
    windowed = attention_bias(packed, q, kv, torch.float32, sliding_window=2)
    assert torch.equal(windowed == 0, attention_mask(q, kv, 2, 4, sliding_window=2))


def test_empty_sequence_row_still_sees_one_key():
    """A dummy sequence (kv length 0) must not produce an all-masked softmax row (NaN)."""
    mask = attention_mask(torch.tensor([1, 1]), torch.tensor([0, 3]), 1, 3)[:, 0, 0]
    assert mask.tolist() == [[True, False, False], [True, True, True]]
