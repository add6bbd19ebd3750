"""``EvictionPolicy``: one priority function per policy; victim selection is shared.

A policy ranks candidates (lower = evicted first) and picks a destination per victim;
``select_victims`` walks the prefix forest from its leaves so that a parent becomes a
candidate in the same call once every child it has on the tier is gone (SGLang's radix
eviction, over a snapshot)::

    candidates on tier T:    A ── B ── C        leaves: C, D
                                   └── D
    need 3 → pop the lowest of {C, D}, then the other; B becomes a leaf → pop B.
    A non-leaf whose children are not all in the snapshot (a pinned child) never becomes one.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from sagellm.core.kv import KVTier
from sagellm.core.validation import invalid
from sagellm.kv_policy.types import (
    BlockCandidate,
    EvictAction,
    EvictionDecision,
    EvictionQuery,
    LoadDecision,
    LoadQuery,
    PolicyOptions,
)


class EvictionPolicy(ABC):
    """Base of every KV policy. Pure: reads snapshots, returns actions, executes nothing.

    Args:
        options: shared policy options; None = ``PolicyOptions()``.
    """

    #: Registry name.
    name: ClassVar[str] = ""

    def __init__(self, options: PolicyOptions | None = None) -> None:
        if options is None:
            options = PolicyOptions()
        if not isinstance(options, PolicyOptions):
            raise invalid(type(self).__name__, "options", options, "a PolicyOptions or None")
        self.options = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    @abstractmethod
    def priority(self, candidate: BlockCandidate, query: EvictionQuery) -> tuple[Any, ...]:
        """Sort key of a candidate; the smallest is evicted first."""

    def destination(self, candidate: BlockCandidate, query: EvictionQuery) -> KVTier | None:
        """Tier a victim goes to (None = drop this copy).

        Default: with ``options.demote``, the next lower tier unless a lower tier already
        holds the block (then nothing needs copying); without it, drop (stock LMDeploy).
        """
        if not self.options.demote or not query.lower_tiers:
            return None
        if any(t in candidate.present_tiers for t in query.lower_tiers):
            return None
        return query.lower_tiers[0]

    def select_victims(self, query: EvictionQuery) -> EvictionDecision:
        """Choose ``query.num_blocks`` victims, leaves first, in eviction order.

        Returns:
            The actions, and ``shortfall`` = blocks still missing when the candidates ran out.
        """
        by_hash: dict[bytes, BlockCandidate] = {}
        for cand in query.candidates:
            by_hash.setdefault(cand.block_hash, cand)
        remaining: dict[bytes, int] = {}
        order: dict[bytes, int] = {}
        heap: list[tuple[tuple[Any, ...], int, BlockCandidate]] = []
        priority = self.priority
        for i, (h, cand) in enumerate(by_hash.items()):
            order[h] = i
            if cand.is_leaf:
                heap.append((priority(cand, query), i, cand))
            else:
                remaining[h] = cand.num_children
        heapq.heapify(heap)
        actions: list[EvictAction] = []
        while heap and len(actions) < query.num_blocks:
            _, _, cand = heapq.heappop(heap)
            actions.append(EvictAction(cand.block_hash, query.tier, self.destination(cand, query)))
            parent = by_hash.get(cand.parent_hash) if cand.parent_hash is not None else None
            if parent is not None and not parent.is_leaf:
                remaining[parent.block_hash] -= 1
                if remaining[parent.block_hash] == 0:
                    heapq.heappush(heap, (self.priority(parent, query), order[parent.block_hash], parent))
        return EvictionDecision(tuple(actions), shortfall=query.num_blocks - len(actions))

    def plan_load(self, query: LoadQuery) -> LoadDecision:
        """How many leading matched blocks to use. Default: all of them."""
        return LoadDecision(num_blocks=len(query.blocks))

    def observe(self, block_hash: bytes, when: float) -> None:
        """Forward an access event to the lifetime predictor, if any."""
        if self.options.predictor is not None:
            self.options.predictor.observe(block_hash, when)
