"""The ``trie_leaves`` plugin on LMDeploy's real Scheduler and BlockTrie (no model).

Two prompts share a prefix, the shorter one ending on a full block; both are prefilled and then
scheduled for decoding, which publishes their blocks. Stock LMDeploy 0.11 leaves the shorter
prompt's last node in the leaf set after the longer prompt's blocks grew below it, and eviction
raises ``KeyError``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from lmdeploy.pytorch.messages import UpdateTokenMode
from lmdeploy.pytorch.paging.block_trie import BlockTrie

from sagellm.engines.lmdeploy import trie_leaves
from tests.integration.engines.bare_scheduler import bare_scheduler

BLOCK = 4


@pytest.fixture
def stock_allocate(monkeypatch):
    """BlockTrie.allocate as LMDeploy ships it (the plugin may be installed in this process)."""
    allocate = BlockTrie.allocate
    monkeypatch.setattr(BlockTrie, "allocate", getattr(allocate, "__wrapped__", allocate))


def _touch_the_tail_before_the_shared_block(trie, clock) -> None:
    """Eviction pops leaves oldest first. LMDeploy stamps access times in whole seconds and both
    blocks are freed in the same call, so the two tie and their order followed the leaf set's
    iteration order (object ids): the stock reproduction failed in 2 of 4 full CI runs. Here the
    longer prompt's tail is older than the shared block above it, the order that pops the shared
    block twice."""
    (tail,) = (node for node in trie.leaves if not node.children)
    shared = tail.parent
    clock.now = 1001.0
    trie.allocator.update_access_time(np.array([tail.block]))
    clock.now = 1002.0
    trie.allocator.update_access_time(np.array([shared.block]))


def _shorter_and_longer_decoded_together(scheduler):
    for session_id, length in ((0, 10), (1, 14)):  # 2 full blocks + 2 tokens; 3 full blocks + 2 tokens
        seq = scheduler.add_session(session_id).add_sequence(np.arange(length), sampling_param=None)
        scheduler.add_sequence(seq)
        time.sleep(0.002)  # distinct arrival times
    running = scheduler.schedule(is_prefill=True).running
    assert len(running) == 2
    scheduler.lock_running(running)
    for seq in running:
        seq.update_token_ids(np.array([99]), mode=UpdateTokenMode.PREFILL)
    scheduler.unlock_running(running)
    assert len(scheduler.schedule(is_prefill=False).running) == 2  # publishes both prompts' blocks
    return scheduler.block_trie


def _inner_nodes_in_leaf_set(trie) -> int:
    return sum(1 for node in trie.leaves if node.children)


def test_stock_lmdeploy_keeps_a_grown_node_as_a_leaf_and_eviction_fails(stock_hooks, stock_allocate, block_clock):
    scheduler = bare_scheduler(BLOCK)
    trie = _shorter_and_longer_decoded_together(scheduler)
    assert _inner_nodes_in_leaf_set(trie) == 1
    scheduler.end_session(0)
    scheduler.end_session(1)
    _touch_the_tail_before_the_shared_block(trie, block_clock)
    with pytest.raises(KeyError):
        trie.evict(100)


def test_with_the_plugin_the_leaf_set_stays_exact_and_every_block_can_be_evicted(stock_hooks, stock_allocate,
                                                                                  block_clock):
    trie_leaves.install_trie_leaves()
    trie_leaves.install_trie_leaves()  # idempotent: wrapped once
    assert BlockTrie.allocate.__wrapped__.__name__ == "allocate"
    assert not hasattr(BlockTrie.allocate.__wrapped__, "__wrapped__")
    scheduler = bare_scheduler(BLOCK)
    trie = _shorter_and_longer_decoded_together(scheduler)
    assert _inner_nodes_in_leaf_set(trie) == 0
    assert len(trie.leaves) == 1  # the longer prompt's last full block
    scheduler.end_session(0)
    scheduler.end_session(1)
    _touch_the_tail_before_the_shared_block(trie, block_clock)
    assert trie.evict(100) == 3  # the shared 2 blocks and the longer prompt's third
    assert scheduler.block_manager.get_num_free_gpu_blocks() == 32


def test_drop_inner_nodes_walks_from_the_end_up_to_the_start_only():
    class Node:
        def __init__(self, parent=None):
            self.parent, self.children = parent, {}
            if parent is not None:
                parent.children[id(self)] = self

    root = Node()
    a = Node(root)
    b = Node(a)
    c = Node(b)
    trie = type("Trie", (), {})()
    trie.leaves = {a, b, c}
    assert trie_leaves.drop_inner_nodes(trie, b, c) == 1  # b only: a is above the start
    assert trie.leaves == {a, c}
    assert trie_leaves.drop_inner_nodes(trie, None, c) == 1  # from the root: a
    assert trie.leaves == {c}
