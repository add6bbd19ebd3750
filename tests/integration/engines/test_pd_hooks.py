"""The pd plugin's hooks on two of LMDeploy's real Schedulers (one prefill, one decode), exact bytes.

Only the cache tensors are stand-ins (``FakeCacheEngine``, as in test_kv_tier_hooks.py); the
transfer goes through a real TransportServer/TransportEngine over shared memory or TCP.
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

from sagellm.comm_backend import KVTransportConfig
from sagellm.comm_backend.pd_config import PDConfig
from sagellm.control_plane.ports import SagePorts
from sagellm.engines.lmdeploy.pd import PDKVHooks

BLOCK = 4
NUM_BLOCKS = 6
FIRST = list(range(100, 109))  # 9 tokens: two full blocks and one partial


def FakeCacheEngine():  # noqa: N802 - reads like the class it stands in for
    return SimpleNamespace(full_gpu_cache=(torch.zeros(2, NUM_BLOCKS, BLOCK, 1, 2), torch.zeros(2, NUM_BLOCKS, BLOCK, 1, 2)))


def scheduler() -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_batches=4, max_session_len=256),
        CacheConfig(max_batches=4, block_size=BLOCK, num_cpu_blocks=0, num_gpu_blocks=NUM_BLOCKS,
                    enable_prefix_caching=True, device_type="cpu"),
        seq_meta=SequenceMeta(BLOCK, strategy=ARSequenceStrategy()),
    )


def physical(sched, logical) -> list[int]:
    return sched.block_manager.allocator.get_physical_blocks(np.asarray(logical)).tolist()


class Side:
    def __init__(self, config: PDConfig, transport: KVTransportConfig, model: str = "test-model") -> None:
        self.scheduler = scheduler()
        self.cache = FakeCacheEngine()
        self.hooks = PDKVHooks(config, transport)
        self.hooks.bind(self.cache, self.scheduler.block_manager.allocator, model=model)

    def __enter__(self) -> Side:
        self._previous = get_kv_hooks()
        set_kv_hooks(self.hooks)
        return self

    def __exit__(self, *exc) -> None:
        set_kv_hooks(self._previous)


@pytest.fixture
def prefill():
    side = Side(PDConfig(role="prefill", pd_listen="127.0.0.1:0", pd_buffer_gib=2e-6), KVTransportConfig(chunk_bytes=4096))
    yield side
    side.hooks.close()


def decode_side(prefill, backend: str, model: str = "test-model", peers=None) -> Side:
    peers = peers or (prefill.hooks.server.address,)
    return Side(PDConfig(role="decode", pd_peers=peers, pd_wait_s=0.5), KVTransportConfig(backend=backend), model)


def run_prefill(side: Side, session_id: int, tokens: list[int]) -> list[int]:
    """Prefill ``tokens`` (one step, one sampled token), write a value per position, end the session."""
    with side:
        session = side.scheduler.add_session(session_id)
        seq = session.add_sequence(np.array(tokens))
        assert side.scheduler.schedule(is_prefill=True).running == [seq]
        keys = side.hooks._expected[seq.seq_id]
        assert len(keys) == len(tokens) // BLOCK and all(k in side.hooks.buffer._expected for k in keys)
        blocks = physical(side.scheduler, seq.logical_blocks.get_real_blocks())
        for position, token in enumerate(tokens):
            block, slot = blocks[position // BLOCK], position % BLOCK
            side.cache.full_gpu_cache[0][:, block, slot] = float(token)
            side.cache.full_gpu_cache[1][:, block, slot] = -float(token)
        seq.update_token_ids(np.array([999]), mode=UpdateTokenMode.DECODE)  # the prompt is computed
        side.scheduler.end_session(session_id)
        assert side.hooks.buffer._expected == {}
        return blocks


def schedule_decode(side: Side, session_id: int, tokens: list[int]):
    with side:
        seq = side.scheduler.add_session(session_id).add_sequence(np.array(tokens))
        assert side.scheduler.schedule(is_prefill=True).running == [seq]
        return seq


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_decode_pulls_the_prompt_blocks_exactly(prefill, backend):
    run_prefill(prefill, 1, FIRST)
    assert prefill.hooks.stats.exported_blocks == 2 and len(prefill.hooks.buffer) == 2
    decode = decode_side(prefill, backend)
    try:
        free_before = decode.scheduler.block_manager.get_num_free_gpu_blocks()
        seq = schedule_decode(decode, 1, FIRST + [300, 301])  # 11 tokens: blocks 0, 1 pulled, 3 tokens computed
        assert decode.hooks.stats.pulled_blocks == 2
        assert seq.num_history_ids == 8
        pulled = physical(decode.scheduler, seq.logical_blocks.get_real_blocks()[:2])
        for index, block in enumerate(pulled):
            expected = torch.tensor(FIRST[index * BLOCK:(index + 1) * BLOCK], dtype=torch.float32)
            for layer in range(2):
                assert torch.equal(decode.cache.full_gpu_cache[0][layer, block, :, 0, 0], expected)
                assert torch.equal(decode.cache.full_gpu_cache[1][layer, block, :, 0, 1], -expected)
        assert decode.scheduler.block_manager.get_num_free_gpu_blocks() == free_before - 3
        # the pulled blocks are in the decode engine's trie: the next request matches them on device
        with decode:
            decode.scheduler.end_session(1)
        seq = schedule_decode(decode, 2, FIRST + [400])
        assert decode.hooks.stats.pulled_blocks == 2
        assert physical(decode.scheduler, seq.logical_blocks.get_real_blocks()[:2]) == pulled
    finally:
        decode.hooks.close()


def test_corrupted_blocks_are_recomputed_and_their_device_blocks_freed(prefill):
    run_prefill(prefill, 1, FIRST)
    memory = prefill.hooks.buffer.memory.view
    memory[0] ^= 0xFF  # the first exported block, at rest in shared memory
    decode = decode_side(prefill, "shm")
    try:
        free_before = decode.scheduler.block_manager.get_num_free_gpu_blocks()
        seq = schedule_decode(decode, 1, FIRST + [300, 301])
        assert decode.hooks.stats.pull_failures == 1 and decode.hooks.stats.pulled_blocks == 0
        assert seq.num_history_ids == 0  # everything is computed
        assert decode.scheduler.block_manager.get_num_free_gpu_blocks() == free_before - 3
    finally:
        decode.hooks.close()


def test_other_tokens_miss_and_a_dead_or_foreign_peer_is_skipped(prefill):
    run_prefill(prefill, 1, FIRST)
    dead = f"127.0.0.1:{SagePorts.allocate()}"
    decode = decode_side(prefill, "tcp", peers=(dead, prefill.hooks.server.address))
    foreign = decode_side(prefill, "tcp", model="another-model")
    try:
        seq = schedule_decode(decode, 1, [100, 101, 102, 103, 5, 6, 7, 8, 9])  # first block shared, second not
        assert decode.hooks.stats.pulled_blocks == 1 and seq.num_history_ids == 4
        assert list(decode.hooks._down_until) == [dead]  # not asked again for a while
        seq = schedule_decode(foreign, 1, FIRST + [300])
        assert foreign.hooks.stats.pulled_blocks == 0 and seq.num_history_ids == 0
    finally:
        decode.hooks.close()
        foreign.hooks.close()


def test_both_role_is_inert():
    hooks = PDKVHooks(PDConfig(role="both"))
    hooks.attach(engine=None)  # returns before touching the engine
    assert not hooks.enabled
