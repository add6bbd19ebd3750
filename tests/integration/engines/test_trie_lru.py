"""The ``trie_lru`` plugin on LMDeploy's real Scheduler and BlockTrie (no model).

Two prompts are run and ended half a second apart within one second of the block manager's clock.
Stock LMDeploy 0.11 stamps both prompts' blocks with the same whole second, so eviction cannot tell
which is older; with the plugin the older prompt's blocks go first.
"""

from __future__ import annotations

import numpy as np
import pytest
from lmdeploy.pytorch.messages import UpdateTokenMode
from lmdeploy.pytorch.paging.block_manager.base_block_manager import LogicalMemory
from lmdeploy.pytorch.paging.scheduler import Scheduler

from sagellm.engines.lmdeploy import trie_lru
from tests.integration.engines.bare_scheduler import bare_scheduler

BLOCK = 4
OLDER, NEWER = np.arange(10), np.arange(100, 110)  # 2 full blocks + 2 tokens each, no shared block


@pytest.fixture
def stock_logical_memory(monkeypatch):
    """LogicalMemory as LMDeploy ships it (the plugin may be installed in this process)."""
    init = LogicalMemory.__init__
    monkeypatch.setattr(LogicalMemory, "__init__", getattr(init, "__wrapped__", init))


def _run_and_end(scheduler: Scheduler, session_id: int, prompt: np.ndarray, clock, now: float) -> None:
    """Prefill ``prompt``, decode once (which publishes its full blocks to the trie), end it; all at ``now``."""
    clock.now = now
    seq = scheduler.add_session(session_id).add_sequence(prompt, sampling_param=None)
    scheduler.add_sequence(seq)
    running = scheduler.schedule(is_prefill=True).running
    scheduler.lock_running(running)
    seq.update_token_ids(np.array([99]), mode=UpdateTokenMode.PREFILL)
    scheduler.unlock_running(running)
    assert len(scheduler.schedule(is_prefill=False).running) == 1
    scheduler.end_session(session_id)


def _two_prompts_half_a_second_apart(clock):
    scheduler = bare_scheduler(BLOCK)
    _run_and_end(scheduler, 0, OLDER, clock, 1000.25)
    _run_and_end(scheduler, 1, NEWER, clock, 1000.75)
    trie = scheduler.block_trie
    first_blocks = {int(node.tokens[0]): node.block for node in trie.get_root(None).children.values()}
    assert sorted(first_blocks) == [0, 100]
    return trie, first_blocks


def _cached_first_tokens(trie) -> list[int]:
    return sorted(int(node.tokens[0]) for node in trie.get_root(None).children.values())


def test_stock_lmdeploy_stamps_both_prompts_with_the_same_second(stock_hooks, stock_logical_memory, block_clock):
    trie, first_blocks = _two_prompts_half_a_second_apart(block_clock)
    times = trie.allocator.get_access_time(np.array([first_blocks[0], first_blocks[100]]))
    assert times.dtype == np.int64
    assert times.tolist() == [1000, 1000]  # a tie: eviction order falls to object ids


def test_with_the_plugin_the_older_prompt_is_evicted_first(stock_hooks, stock_logical_memory, block_clock):
    trie_lru.install_trie_lru()
    trie_lru.install_trie_lru()  # idempotent: wrapped once
    assert not hasattr(LogicalMemory.__init__.__wrapped__, "__wrapped__")
    trie, first_blocks = _two_prompts_half_a_second_apart(block_clock)
    times = trie.allocator.get_access_time(np.array([first_blocks[0], first_blocks[100]]))
    assert times.tolist() == [1000.25, 1000.75]
    assert trie.evict(2) == 2
    assert _cached_first_tokens(trie) == [100]
    assert trie.evict(2) == 2
    assert _cached_first_tokens(trie) == []
