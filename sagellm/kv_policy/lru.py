"""``lru``: least recently used leaf first, dropped -- LMDeploy's stock ``BlockTrie.evict``.

Ties (equal ``last_access``) go to the deeper block first, so a prefix shrinks from its end.
With ``PolicyOptions(demote=True)`` victims go to the next lower tier instead of being dropped.
"""

from __future__ import annotations

from sagellm.kv_policy.base import EvictionPolicy
from sagellm.kv_policy.types import BlockCandidate, EvictionQuery


class LRUPolicy(EvictionPolicy):
    """Evict the least recently used leaf first."""

    name = "lru"

    def priority(self, candidate: BlockCandidate, query: EvictionQuery) -> tuple[float, int]:
        return (candidate.last_access, -candidate.depth)
