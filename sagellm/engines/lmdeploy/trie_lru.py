"""Make LMDeploy 0.11's prefix-trie eviction least-recently-used to the microsecond, not the second.

``LogicalMemory`` keeps each block's last access in an ``int64`` array, and the allocator stores
``time.perf_counter()`` into it, so every stamp is truncated to a whole second. ``BlockTrie.evict``
pops leaves from a heap keyed on those stamps, and ``Node.__lt__`` answers True for any pair, so
among leaves touched within the same second the order is whatever the leaf set's iteration order
(object ids) makes it. On a server that finishes several requests a second, "least recently used"
is then a coin toss within each second: a prompt used a moment ago can be evicted before one from
the start of that second. With the KV tiers on, it decides which prefixes are written back and which
survive on the device. Measured on the tiny model (tests/integration/engines/test_kv_tiers.py): of
the first four of eight ~200-token documents run in a row over a 48-block cache, the ones written
back varied from run to run, and in some runs none of them had its first block on SSD.

This plugin wraps ``LogicalMemory.__init__`` and gives it a ``float64`` access-time array, so
stamps keep ``perf_counter``'s resolution. Ties remain only between blocks stamped by one call,
which were used together. Nothing else reads the array; the values are the same clock.
"""

from __future__ import annotations

import functools

import numpy as np

from sagellm.engines.lmdeploy.wrap_once import wrap_once

_MARKER = "__sagellm_trie_lru__"


def _wrap_init(init):
    @functools.wraps(init)
    def init_with_exact_access_times(memory, *args, **kwargs):
        init(memory, *args, **kwargs)
        memory.access_time = memory.access_time.astype(np.float64)

    return init_with_exact_access_times


def install_trie_lru() -> None:
    """Plugin entry: wrap ``LogicalMemory.__init__`` once (idempotent)."""
    from lmdeploy.pytorch.paging.block_manager.base_block_manager import LogicalMemory

    wrap_once(LogicalMemory, "__init__", _MARKER, _wrap_init)
