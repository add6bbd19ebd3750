"""The 0002/0003 seams on LMDeploy's real Scheduler, block manager and trie, with exact block ids.

Only the cache tensors are stand-ins (``FakeCacheEngine``): the hooks copy blocks in and out of
``full_gpu_cache`` exactly as they do for the real CacheEngine.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lmdeploy.pytorch.config import CacheConfig, SchedulerConfig
from lmdeploy.pytorch.messages import SequenceMeta, UpdateTokenMode
from lmdeploy.pytorch.paging.hooks import get_kv_hooks, set_kv_hooks
from lmdeploy.pytorch.paging.scheduler import Scheduler
from lmdeploy.pytorch.strategies.ar.sequence import ARSequenceStrategy

from sagellm.engines.lmdeploy.kv_tiers import TieredPrefixCache
from sagellm.kv_runtime.config import KVTierConfig

BLOCK = 4
NUM_BLOCKS = 6


def FakeCacheEngine():  # noqa: N802 - reads like the class it stands in for
    keys = torch.zeros(2, NUM_BLOCKS, BLOCK, 1, 2)
    values = torch.zeros(2, NUM_BLOCKS, BLOCK, 1, 2)
    return SimpleNamespace(full_gpu_cache=(keys, values))


@pytest.fixture
def harness():
    previous = get_kv_hooks()
    scheduler = Scheduler(
        SchedulerConfig(max_batches=4, max_session_len=256),
        CacheConfig(max_batches=4, block_size=BLOCK, num_cpu_blocks=0, num_gpu_blocks=NUM_BLOCKS,
                    enable_prefix_caching=True, device_type="cpu"),
        seq_meta=SequenceMeta(BLOCK, strategy=ARSequenceStrategy()),
    )
    cache = FakeCacheEngine()
    hooks = TieredPrefixCache(KVTierConfig(kv_tiers=("device", "host"), host_cache_gib=0.01))
    hooks.bind(cache, scheduler.block_manager.allocator, model="test-model")
    set_kv_hooks(hooks)
    yield scheduler, cache, hooks
    hooks.close()
    set_kv_hooks(previous)


def physical(scheduler, logical) -> list[int]:
    return scheduler.block_manager.allocator.get_physical_blocks(np.asarray(logical)).tolist()


def run_to_cache(scheduler, cache, session_id: int, tokens: list[int]):
    """Prefill, write a recognisable value per position into its block, let the trie cache it, end the session."""
    session = scheduler.add_session(session_id)
    seq = session.add_sequence(np.array(tokens))
    out = scheduler.schedule(is_prefill=True)
    assert out.running == [seq]
    blocks = physical(scheduler, seq.logical_blocks.get_real_blocks())
    for position, token in enumerate(tokens):
        block, slot = blocks[position // BLOCK], position % BLOCK
        cache.full_gpu_cache[0][:, block, slot] = float(token)
        cache.full_gpu_cache[1][:, block, slot] = -float(token)
    seq.update_token_ids(np.array([999]), mode=UpdateTokenMode.DECODE)  # one decoded token: the trie caches full blocks on decode
    scheduler.schedule(is_prefill=False)
    scheduler.end_session(session_id)
    return blocks


def test_evicted_prefix_is_written_back_and_restored_exactly(harness):
    scheduler, cache, hooks = harness
    first = list(range(100, 109))  # 9 tokens: blocks [100..103], [104..107] cached, 108 partial
    first_blocks = run_to_cache(scheduler, cache, 1, first)
    assert first_blocks == [0, 1, 2]
    assert len(scheduler.block_trie.leaves) == 1

    offload_depths = []
    store_offload = hooks.store.offload

    def spy(keys, payloads, hints=None):
        offload_depths.extend(lineage.depth for lineage in hints.lineage)
        return store_offload(keys, payloads, hints)

    hooks.store.offload = spy
    # 21 new tokens need all 6 blocks: the trie drops its leaf (block 1) then its parent (block 0)
    other = list(range(200, 221))
    session = scheduler.add_session(2)
    seq = session.add_sequence(np.array(other))
    assert scheduler.schedule(is_prefill=True).running == [seq]
    assert hooks.stats.offloaded_blocks == 2
    assert offload_depths == [4, 0]  # LRU leaf first, then its parent
    assert hooks.stats.restored_blocks == 0
    scheduler.end_session(2)

    # the first prompt again: the device trie has nothing, the host tier has both blocks
    session = scheduler.add_session(3)
    seq = session.add_sequence(np.array(first + [300, 301]))
    out = scheduler.schedule(is_prefill=True)
    assert out.running == [seq]
    assert hooks.stats.restored_blocks == 2
    assert hooks.stats.hit_tokens == {"device": 0, "host": 8, "ssd": 0}
    assert seq.num_history_ids == 8  # the restored prefix is not recomputed
    restored = physical(scheduler, seq.logical_blocks.get_real_blocks()[:2])
    for index, block in enumerate(restored):
        expected = torch.tensor(first[index * BLOCK:(index + 1) * BLOCK], dtype=torch.float32)
        assert torch.equal(cache.full_gpu_cache[0][0, block, :, 0, 0], expected)
        assert torch.equal(cache.full_gpu_cache[1][1, block, :, 0, 1], -expected)
    # the restored blocks are linked into LMDeploy's trie: a fourth request matches them on device
    scheduler.end_session(3)
    session = scheduler.add_session(4)
    seq = session.add_sequence(np.array(first + [400]))
    scheduler.schedule(is_prefill=True)
    assert hooks.stats.hit_tokens["device"] == 8
    assert physical(scheduler, seq.logical_blocks.get_real_blocks()[:2]) == restored


def test_no_hooks_is_stock(harness):
    scheduler, cache, hooks = harness
    set_kv_hooks(None)
    run_to_cache(scheduler, cache, 1, list(range(100, 109)))
    session = scheduler.add_session(2)
    session.add_sequence(np.array(list(range(200, 221))))
    scheduler.schedule(is_prefill=True)
    assert hooks.stats.offloaded_blocks == 0 and hooks.stats.lookups == 0


def test_blocks_of_a_sequence_that_ended_at_prefill_are_stored_on_release(harness):
    scheduler, cache, hooks = harness
    prompt = list(range(500, 510))  # 10 tokens: two full blocks, never cached by the trie (no decode step)
    session = scheduler.add_session(1)
    seq = session.add_sequence(np.array(prompt))
    assert scheduler.schedule(is_prefill=True).running == [seq]
    blocks = physical(scheduler, seq.logical_blocks.get_real_blocks())
    for position, token in enumerate(prompt):
        cache.full_gpu_cache[0][:, blocks[position // BLOCK], position % BLOCK] = float(token)
        cache.full_gpu_cache[1][:, blocks[position // BLOCK], position % BLOCK] = -float(token)
    seq.update_token_ids(np.array([999]), mode=UpdateTokenMode.DECODE)  # the prefill's sampled token
    assert len(scheduler.block_trie.leaves) == 0
    scheduler.end_session(1)
    assert hooks.stats.offloaded_blocks == 2

    session = scheduler.add_session(2)
    seq = session.add_sequence(np.array(prompt + [999, 7]))
    assert scheduler.schedule(is_prefill=True).running == [seq]
    assert hooks.stats.hit_tokens == {"device": 0, "host": 8, "ssd": 0}
    assert seq.num_history_ids == 8
    restored = physical(scheduler, seq.logical_blocks.get_real_blocks()[:2])
    for index, block in enumerate(restored):
        expected = torch.tensor(prompt[index * BLOCK:(index + 1) * BLOCK], dtype=torch.float32)
        assert torch.equal(cache.full_gpu_cache[0][1, block, :, 0, 1], expected)
        assert torch.equal(cache.full_gpu_cache[1][0, block, :, 0, 0], -expected)


def test_release_stores_only_what_the_trie_does_not_hold(harness):
    scheduler, cache, hooks = harness
    run_to_cache(scheduler, cache, 1, list(range(100, 109)))  # both full blocks cached by the trie on decode
    assert hooks.stats.offloaded_blocks == 0
