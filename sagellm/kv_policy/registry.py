"""``KV_POLICIES``: the strict registry of eviction policies, selected by config name.

    policy = build_policy("cost_aware", PolicyOptions(cost_model=model))

Unknown names raise ``UnknownNameError`` listing the valid ones. Out-of-tree policies
register an ``EvictionPolicy`` subclass (or a lazy ``"module:Class"`` path) under a new name.
"""

from __future__ import annotations

from sagellm.core.registry import Registry
from sagellm.kv_policy.base import EvictionPolicy
from sagellm.kv_policy.types import PolicyOptions

KV_POLICIES: Registry[type[EvictionPolicy]] = Registry("kv policy")
KV_POLICIES.register("lru", "sagellm.kv_policy.lru:LRUPolicy")
KV_POLICIES.register("lfu", "sagellm.kv_policy.lfu:LFUPolicy")
KV_POLICIES.register("cost_aware", "sagellm.kv_policy.cost_aware:CostAwarePolicy")


def build_policy(name: str, options: PolicyOptions | None = None) -> EvictionPolicy:
    """Instantiate the policy registered as ``name``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the valid names).
        ValueError: the options do not suit the policy (``cost_aware`` without a cost model).
    """
    policy = KV_POLICIES.create(name, options)
    if not isinstance(policy, EvictionPolicy):
        raise TypeError(f"kv policy {name!r} built {policy!r}, which is not an EvictionPolicy")
    return policy
