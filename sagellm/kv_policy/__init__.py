"""sagellm.kv_policy: pure KV eviction and load policies that return actions.

See README.md in this folder for the contract. Imports only the standard library and
``sagellm.core``; importing it has no side effects beyond filling ``KV_POLICIES``.
"""

from sagellm.kv_policy.base import EvictionPolicy
from sagellm.kv_policy.cost import CostModel, TierCost
from sagellm.kv_policy.cost_aware import CostAwarePolicy
from sagellm.kv_policy.lfu import LFUPolicy
from sagellm.kv_policy.lifetime import EWMAReusePredictor, LifetimePredictor
from sagellm.kv_policy.lru import LRUPolicy
from sagellm.kv_policy.registry import KV_POLICIES, build_policy
from sagellm.kv_policy.types import (
    TIER_ORDER,
    BlockCandidate,
    EvictAction,
    EvictionDecision,
    EvictionQuery,
    LoadCandidate,
    LoadDecision,
    LoadQuery,
    PolicyOptions,
    tier_rank,
    tiers_below,
)

__all__ = [
    "KV_POLICIES",
    "TIER_ORDER",
    "BlockCandidate",
    "CostAwarePolicy",
    "CostModel",
    "EWMAReusePredictor",
    "EvictAction",
    "EvictionDecision",
    "EvictionPolicy",
    "EvictionQuery",
    "LFUPolicy",
    "LRUPolicy",
    "LifetimePredictor",
    "LoadCandidate",
    "LoadDecision",
    "LoadQuery",
    "PolicyOptions",
    "TierCost",
    "build_policy",
    "tier_rank",
    "tiers_below",
]
