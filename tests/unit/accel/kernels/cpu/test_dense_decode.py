"""Dense decode history: when it appends, rebuilds or stays off, and that it always equals the paged gather."""

from __future__ import annotations

import torch

from sagellm.accel.kernels.cpu import DenseDecodeKV, DensePlan, fill_kv_cache, gather_history, pack_batch, paged_attention
from sagellm.accel.kernels.cpu.dense_decode import length_buckets

BLOCK = 4
HEADS, KV_HEADS, DIM = 4, 2, 8
PER_POSITION = 2 * KV_HEADS * DIM * 4  # one layer, K and V, float32


def _packed(q, kv):
    q, kv = torch.tensor(q), torch.tensor(kv)
    return pack_batch(q, kv, q.cumsum(0) - q), kv


def _plan(dense, q, kv, table):
    packed, kv = _packed(q, kv)
    return dense.plan(packed, torch.tensor(table), kv, BLOCK, PER_POSITION)


def test_plans_follow_the_decode_batch():
    dense = DenseDecodeKV(budget_bytes=1 << 20, headroom=4)
    table = [[3, 5, 0], [7, 9, 0]]
    assert _plan(dense, [2, 3], [2, 3], table) is DensePlan.OFF  # prefill
    assert _plan(dense, [1, 1], [3, 4], table) is DensePlan.REBUILD  # first decode step
    assert _plan(dense, [1, 1], [4, 5], table) is DensePlan.APPEND  # one token further
    assert _plan(dense, [1, 1], [5, 6], [[3, 5, 11], [7, 9, 0]]) is DensePlan.APPEND  # a block allocated ahead
    assert _plan(dense, [1, 1], [6, 7], [[3, 5, 11], [8, 9, 0]]) is DensePlan.REBUILD  # a history block changed
    assert _plan(dense, [1, 1], [8, 8], [[3, 5, 11], [8, 9, 0]]) is DensePlan.REBUILD  # not one token further
    assert _plan(dense, [1], [9], [[3, 5, 11]]) is DensePlan.REBUILD  # another batch
    assert dense.stats == {"off": 1, "rebuild": 4, "append": 2, "carried_rows": 0}


def test_capacity_and_budget():
    dense = DenseDecodeKV(budget_bytes=2 * 12 * PER_POSITION, headroom=4)
    table = [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert _plan(dense, [1, 1], [6, 8], table) is DensePlan.REBUILD  # capacity 8 + 4 = 12 fits the budget
    for step in range(4):
        assert _plan(dense, [1, 1], [7 + step, 9 + step], table) is DensePlan.APPEND
    assert _plan(dense, [1, 1], [11, 13], table) is DensePlan.OFF  # needs 13 > 12 positions: over budget
    assert DenseDecodeKV(budget_bytes=0).plan(*_packed([1], [3]), torch.tensor([[1]]), BLOCK, 1) is DensePlan.OFF


def _decode_run(steps, dense):
    """Decode ``steps`` tokens for 3 sequences; returns attention outputs with and without the dense history."""
    torch.manual_seed(0)
    num_blocks = 16
    k_cache = torch.full((num_blocks, BLOCK, KV_HEADS, DIM), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    table = torch.tensor([[9, 2, 14, 0], [4, 11, 6, 0], [13, 1, 8, 3]]).int()
    kv = torch.tensor([2, 5, 3])
    q = torch.tensor([2, 5, 3])
    packed = pack_batch(q, kv, q.cumsum(0) - q)  # prefill
    fill_kv_cache(torch.randn(10, KV_HEADS, DIM), torch.randn(10, KV_HEADS, DIM), k_cache, v_cache, table, packed)
    dense.plan(packed, table, kv, BLOCK, PER_POSITION)
    outs = []
    for _ in range(steps):
        kv = kv + 1
        ones = torch.ones(3, dtype=torch.long)
        packed = pack_batch(ones, kv, torch.arange(3))
        key, value, query = torch.randn(3, KV_HEADS, DIM), torch.randn(3, KV_HEADS, DIM), torch.randn(3, HEADS, DIM)
        plan = dense.plan(packed, table, kv, BLOCK, PER_POSITION)
        fill_kv_cache(key, value, k_cache, v_cache, table, packed)
        history = dense.layer_history(plan, k_cache, v_cache, key, value, table, kv, packed, torch.float32)
        gathered = gather_history(k_cache, table, kv, packed).transpose(1, 2)
        valid = torch.arange(packed.max_kv_len)[None, :] < kv[:, None]
        keys, values = history.batch_order(packed.max_kv_len)
        assert torch.equal(keys.transpose(1, 2)[valid], gathered.transpose(1, 2)[valid])
        assert history.layout.order.tolist() == [1, 2, 0]  # longest history first
        assert torch.equal(history.layout.kv_seqlens, kv[history.layout.order])
        assert bool(torch.isfinite(history.keys).all() and torch.isfinite(history.values).all())
        args = (query, k_cache, v_cache, table, ones, kv, packed)
        outs.append((paged_attention(*args, scale=0.3, history=history), paged_attention(*args, scale=0.3)))
    return outs


def test_appended_history_equals_the_paged_gather_bit_for_bit():
    dense = DenseDecodeKV(budget_bytes=1 << 20, headroom=3)
    outs = _decode_run(8, dense)  # crosses block boundaries and the headroom (rebuilds once)
    assert dense.stats["append"] >= 5 and dense.stats["rebuild"] >= 2
    for with_dense, gathered in outs:
        # bucketed attention sums over fewer padded keys than the gather path: equal up to rounding
        torch.testing.assert_close(with_dense, gathered, rtol=1e-6, atol=1e-6)


def test_length_buckets_trade_padding_against_calls():
    assert length_buckets([]) == []
    assert length_buckets([9, 9, 9]) == [(0, 3)]  # equal lengths: one call
    assert length_buckets([1000, 100, 100, 100], call_positions=10) == [(0, 1), (1, 4)]
    assert length_buckets([1000, 100, 100, 100], call_positions=10_000) == [(0, 4)]  # a call costs more
    # 2 * 800 + 3 * 200 = 2200 beats 1 * 800 + 4 * 400 and 3 * 800 + 2 * 100
    assert length_buckets([800, 400, 200, 100, 50], call_positions=0, max_buckets=2) == [(0, 2), (2, 5)]


def test_buckets_are_cut_at_rebuild_and_grow_with_every_step():
    dense = DenseDecodeKV(budget_bytes=1 << 20, headroom=8, bucket_call_positions=16)
    k_cache, v_cache = torch.randn(64, BLOCK, KV_HEADS, DIM), torch.randn(64, BLOCK, KV_HEADS, DIM)
    table = torch.arange(60).view(3, 20).int()
    lengths = [3, 60, 4]
    for step in range(3):
        kv = torch.tensor(lengths) + step
        packed, kv = _packed([1, 1, 1], kv.tolist())
        plan = dense.plan(packed, table, kv, BLOCK, PER_POSITION)
        key, value = torch.randn(3, KV_HEADS, DIM), torch.randn(3, KV_HEADS, DIM)
        fill_kv_cache(key, value, k_cache, v_cache, table, packed)
        history = dense.layer_history(plan, k_cache, v_cache, key, value, table, kv, packed, torch.float32)
        assert plan is (DensePlan.REBUILD if step == 0 else DensePlan.APPEND)
        assert history.layout.order.tolist() == [1, 2, 0]
        assert history.layout.buckets == ((0, 1, 60 + step), (1, 3, 4 + step))
        query = torch.randn(3, HEADS, DIM)
        args = (query, k_cache, v_cache, table, torch.ones(3, dtype=torch.long), kv, packed)
        torch.testing.assert_close(paged_attention(*args, scale=0.3, history=history),
                                   paged_attention(*args, scale=0.3), rtol=1e-6, atol=1e-6)


def test_a_layer_that_missed_a_step_rebuilds():
    dense = DenseDecodeKV(budget_bytes=1 << 20)
    k_cache = torch.randn(4, BLOCK, KV_HEADS, DIM)
    v_cache = torch.randn(4, BLOCK, KV_HEADS, DIM)
    table = torch.tensor([[1, 2]])
    key, value = torch.randn(1, KV_HEADS, DIM), torch.randn(1, KV_HEADS, DIM)
    for length in (5, 6, 7):
        packed, kv = _packed([1], [length])
        plan = dense.plan(packed, table, kv, BLOCK, PER_POSITION)
        if length != 6:  # this layer skipped step 2: its copy lacks position 5
            fill_kv_cache(key, value, k_cache, v_cache, table, packed)
            history = dense.layer_history(plan, k_cache, v_cache, key, value, table, kv, packed, torch.float32)
    assert plan is DensePlan.APPEND
    keys, _ = history.batch_order(packed.max_kv_len)
    assert torch.equal(keys[0].transpose(0, 1), gather_history(k_cache, table, kv, packed)[0])


class _TwoLayerEngine:
    """Two layers of paged K/V caches (never-written slots NaN) fed like the engine feeds them."""

    def __init__(self, dense):
        self.dense = dense
        self.caches = [(torch.full((32, BLOCK, KV_HEADS, DIM), float("nan")),
                        torch.full((32, BLOCK, KV_HEADS, DIM), float("nan"))) for _ in range(2)]

    def prefill(self, table, lengths):
        q = torch.tensor(lengths)
        packed = pack_batch(q, q, q.cumsum(0) - q)
        assert self.dense.plan(packed, table, q, BLOCK, PER_POSITION, last_k_cache=self.caches[-1][0]) is DensePlan.OFF
        for k_cache, v_cache in self.caches:
            fill_kv_cache(torch.randn(int(q.sum()), KV_HEADS, DIM), torch.randn(int(q.sum()), KV_HEADS, DIM),
                          k_cache, v_cache, table, packed)

    def decode(self, table, kv):
        ones = torch.ones(kv.numel(), dtype=torch.long)
        packed = pack_batch(ones, kv, torch.arange(kv.numel()))
        plan = self.dense.plan(packed, table, kv, BLOCK, PER_POSITION, last_k_cache=self.caches[-1][0])
        for k_cache, v_cache in self.caches:
            key, value = torch.randn(kv.numel(), KV_HEADS, DIM), torch.randn(kv.numel(), KV_HEADS, DIM)
            fill_kv_cache(key, value, k_cache, v_cache, table, packed)
            history = self.dense.layer_history(plan, k_cache, v_cache, key, value, table, kv, packed, torch.float32)
            valid = torch.arange(packed.max_kv_len)[None, :] < kv[:, None]
            for dense_kv, cache in zip(history.batch_order(packed.max_kv_len), (k_cache, v_cache)):
                gathered = gather_history(cache, table, kv, packed)  # [b, L, heads, dim]
                assert torch.equal(dense_kv.transpose(1, 2)[valid], gathered[valid])
            assert bool(torch.isfinite(history.keys).all() and torch.isfinite(history.values).all())
        return plan


def test_a_rebuild_carries_over_rows_it_holds_and_gathers_the_rest():
    torch.manual_seed(0)
    dense = DenseDecodeKV(budget_bytes=1 << 20, headroom=2)
    engine = _TwoLayerEngine(dense)
    table = torch.tensor([[9, 2, 14, 0], [4, 11, 6, 0], [13, 1, 8, 3]]).int()
    kv = torch.tensor([2, 5, 3])
    engine.prefill(table, kv.tolist())
    for _ in range(3):
        kv = kv + 1
        engine.decode(table, kv)
    # sequence 1 finished; a new sequence (blocks 20, 21) is prefilled, then decodes with 0 and 2
    engine.prefill(torch.tensor([[20, 21, 0, 0]]).int(), [6])
    table = torch.tensor([[9, 2, 14, 0], [20, 21, 0, 0], [13, 1, 8, 3]]).int()
    kv = torch.tensor([kv[0] + 1, 7, kv[2] + 1])
    assert engine.decode(table, kv) is DensePlan.REBUILD
    assert dense.stats["carried_rows"] == 2
    kv = kv + 1
    assert engine.decode(table, kv) is DensePlan.APPEND


def test_blocks_handed_to_another_sequence_are_gathered_not_carried():
    torch.manual_seed(1)
    dense = DenseDecodeKV(budget_bytes=1 << 20, headroom=2)
    engine = _TwoLayerEngine(dense)
    table = torch.tensor([[5, 6, 7], [8, 9, 10]]).int()
    kv = torch.tensor([5, 6])
    engine.prefill(table, kv.tolist())
    kv = kv + 1
    engine.decode(table, kv)
    # sequence 0 finished and a new one got exactly its blocks, with other content and a longer prompt
    engine.prefill(torch.tensor([[5, 6, 7]]).int(), [8])
    kv = torch.tensor([8, int(kv[1]) + 1])
    assert engine.decode(table, kv) is DensePlan.REBUILD
    assert dense.stats["carried_rows"] == 1  # only sequence 1
