"""``cost_aware``: keep what is dear to lose, demote only when moving beats recomputing.

For a candidate on tier ``T`` of ``size`` bytes, ``depth`` tokens deep (see ``cost.py``)::

    rec    = recompute_us(depth, num_tokens)
    after  = cost of using the block once it has left T:
               a lower tier L already holds it        -> min(rec, transfer_us(L))   (nothing to copy)
               else next lower tier N and
                    transfer_us(N) * margin < rec      -> transfer_us(N)            (demote to N)
               else                                    -> rec                       (drop)
    loss   = max(0, after - transfer_us(T))             (transfer_us(DEVICE) = 0)
    score  = loss * reuse_rate                          (LifetimePredictor)

Victims are the leaves with the lowest score (ties: least recently used, then deepest).
Short prefixes are cheap to recompute, so they go first and are dropped rather than
demoted; long prefixes are kept, or demoted when a lower tier is cheaper than recompute.

At load time ``plan_load`` picks how many leading matched blocks to load: with ``load_i``
the transfer cost of block ``i`` from its tier and ``rec_i`` its recompute cost, it uses
the ``k`` minimising ``sum(load_i, i < k) + sum(rec_i, i >= k)`` (the largest such ``k`` on
ties) -- e.g. an SSD block under a short prefix is recomputed instead of read.
"""

from __future__ import annotations

from sagellm.core.kv import KVTier
from sagellm.core.validation import invalid
from sagellm.kv_policy.base import EvictionPolicy
from sagellm.kv_policy.cost import CostModel
from sagellm.kv_policy.lifetime import EWMAReusePredictor, LifetimePredictor
from sagellm.kv_policy.types import (
    TIER_ORDER,
    BlockCandidate,
    EvictionQuery,
    LoadDecision,
    LoadQuery,
    PolicyOptions,
    tier_rank,
)


class CostAwarePolicy(EvictionPolicy):
    """Recompute-versus-transfer eviction and load planning.

    Args:
        options: must carry a ``cost_model``; ``predictor`` None = a fresh ``EWMAReusePredictor``.

    Raises:
        ValueError: ``options.cost_model`` is None.
    """

    name = "cost_aware"

    def __init__(self, options: PolicyOptions | None = None) -> None:
        super().__init__(options)
        if self.options.cost_model is None:
            raise invalid(
                type(self).__name__, "options.cost_model", None, "a CostModel (PolicyOptions(cost_model=...))"
            )
        self.cost_model: CostModel = self.options.cost_model
        self.predictor: LifetimePredictor = (
            self.options.predictor if self.options.predictor is not None else EWMAReusePredictor()
        )

    def _fallback(self, candidate: BlockCandidate, query: EvictionQuery) -> tuple[KVTier | None, float]:
        """(destination, cost of using the block after it leaves its tier)."""
        cm = self.cost_model
        rec = cm.recompute_us(candidate.depth, candidate.num_tokens)
        rank = tier_rank(candidate.tier)
        held = [t for t in TIER_ORDER if t in candidate.present_tiers and tier_rank(t) > rank and t in cm.tiers]
        if held:
            return None, min(rec, cm.transfer_us(held[0], candidate.size_bytes))
        if query.lower_tiers:
            nxt = query.lower_tiers[0]
            moved = cm.transfer_us(nxt, candidate.size_bytes)
            if moved * self.options.margin < rec:
                return nxt, moved
        return None, rec

    def score(self, candidate: BlockCandidate, query: EvictionQuery) -> float:
        """Expected cost per second of losing ``candidate`` from its tier (lower = evict first)."""
        _, after = self._fallback(candidate, query)
        loss = max(0.0, after - self.cost_model.transfer_us(candidate.tier, candidate.size_bytes))
        return loss * self.predictor.reuse_rate(candidate, query.now)

    def priority(self, candidate: BlockCandidate, query: EvictionQuery) -> tuple[float, float, int]:
        return (self.score(candidate, query), candidate.last_access, -candidate.depth)

    def destination(self, candidate: BlockCandidate, query: EvictionQuery) -> KVTier | None:
        return self._fallback(candidate, query)[0]

    def plan_load(self, query: LoadQuery) -> LoadDecision:
        cm = self.cost_model
        loads = [cm.transfer_us(b.tier, b.size_bytes) for b in query.blocks]
        recs = [cm.recompute_us(b.depth, b.num_tokens) for b in query.blocks]
        total_rec = sum(recs)
        best_k, best_cost = 0, total_rec
        cost = total_rec
        for k in range(1, len(query.blocks) + 1):
            cost += loads[k - 1] - recs[k - 1]
            if cost <= best_cost:
                best_k, best_cost = k, cost
        return LoadDecision(
            num_blocks=best_k,
            load_us=sum(loads[:best_k]),
            recompute_us=sum(recs[best_k:]),
            saved_us=total_rec - best_cost,
        )

    def observe(self, block_hash: bytes, when: float) -> None:
        self.predictor.observe(block_hash, when)
