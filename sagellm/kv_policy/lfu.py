"""``lfu``: fewest hits first; ties go to the least recently used, then the deepest block.

With ``PolicyOptions(demote=True)`` victims go to the next lower tier instead of being dropped.
"""

from __future__ import annotations

from sagellm.kv_policy.base import EvictionPolicy
from sagellm.kv_policy.types import BlockCandidate, EvictionQuery


class LFUPolicy(EvictionPolicy):
    """Evict the least frequently hit leaf first."""

    name = "lfu"

    def priority(self, candidate: BlockCandidate, query: EvictionQuery) -> tuple[int, float, int]:
        return (candidate.hit_count, candidate.last_access, -candidate.depth)
