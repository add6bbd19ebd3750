"""Keep LMDeploy 0.11's prefix-trie leaf set exact, so that eviction cannot crash the engine.

``BlockTrie`` keeps ``leaves``, the nodes without children that eviction may drop. ``allocate``
publishes a sequence's full blocks by walking down from the node it matched at admission. Where
the trie already holds a block, it steps onto that node, and it appends new nodes where the trie
ends. It takes out of ``leaves`` only the node it started from. So when the walk passes a leaf of
another sequence and grows the trie below it, that node stays in ``leaves`` with a child.

Example: a shorter and a longer prompt share a prefix and decode side by side, the shorter one's
last full block being a leaf when the longer one publishes past it.

``evict`` then takes the stale node twice: once from the leaf set, and again as the parent its
child left childless. Its second ``leaves.remove`` raises ``KeyError`` inside the engine loop. The
engine loop dies, and every request in flight waits forever. Seen on shared-document QA (questions
of different lengths over one document) on the CPU, and reproduced on the bare scheduler
(tests/integration/engines/test_trie_leaves.py).

This plugin wraps ``BlockTrie.allocate``. After LMDeploy's own allocation it walks back from the
sequence's new last node to the one it started from and drops every node that has children from
``leaves``. The cost is one step per block the call published.
"""

from __future__ import annotations

import functools
import logging

from sagellm.engines.lmdeploy.wrap_once import wrap_once

logger = logging.getLogger("sagellm.trie_leaves")

_MARKER = "__sagellm_trie_leaves__"


def drop_inner_nodes(trie, start, end) -> int:
    """Take out of ``trie.leaves`` every node with children from ``end`` up to ``start`` (or the root).

    Returns how many were taken out.
    """
    dropped = 0
    node = end
    while node is not None:
        if node.children and node in trie.leaves:
            trie.leaves.discard(node)
            dropped += 1
        if node is start:
            break
        node = node.parent
    return dropped


def _wrap_allocate(allocate):
    @functools.wraps(allocate)
    def allocate_keeping_leaves(trie, seq, *args, **kwargs):
        start = getattr(seq.logical_blocks, "last_shared_node", None)
        result = allocate(trie, seq, *args, **kwargs)
        end = getattr(seq.logical_blocks, "last_shared_node", None)
        if trie.enable and end is not None and end is not start:
            dropped = drop_inner_nodes(trie, start, end)
            if dropped:
                logger.debug("prefix trie: %d node(s) with children taken out of the leaf set", dropped)
        return result

    return allocate_keeping_leaves


def install_trie_leaves() -> None:
    """Plugin entry: wrap ``BlockTrie.allocate`` once (idempotent)."""
    from lmdeploy.pytorch.paging.block_trie import BlockTrie

    wrap_once(BlockTrie, "allocate", _MARKER, _wrap_allocate)
