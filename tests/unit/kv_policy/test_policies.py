import pytest

from sagellm.core.kv import KVTier
from sagellm.core.registry import UnknownNameError
from sagellm.kv_policy import (
    KV_POLICIES,
    BlockCandidate,
    CostAwarePolicy,
    CostModel,
    EvictAction,
    EvictionQuery,
    LFUPolicy,
    LoadCandidate,
    LoadQuery,
    LRUPolicy,
    PolicyOptions,
    TierCost,
    build_policy,
)

D, H, S = KVTier.DEVICE, KVTier.HOST, KVTier.SSD


def h(name: str) -> bytes:
    return name.encode().ljust(16, b".")


def cand(name, tier=D, *, depth=0, last=0.0, hits=0, leaf=True, parent=None, children=0, size=16384, present=(), n=16):
    return BlockCandidate(
        block_hash=h(name), tier=tier, depth=depth, num_tokens=n, last_access=last, hit_count=hits,
        size_bytes=size, is_leaf=leaf, parent_hash=None if parent is None else h(parent), num_children=children,
        present_tiers=frozenset(present),
    )


def names(decision):
    return [a.block_hash.rstrip(b".").decode() for a in decision.actions]


def dests(decision):
    return [None if a.to_tier is None else a.to_tier.value for a in decision.actions]


# host: 5 us + 16384 B / 1 GB/s = 21.384 us; ssd: 100 us + 163.84 us = 263.84 us
# recompute(depth, 16) = 16 * 10 + 0.01 * (16 * depth + 136)
MODEL = CostModel(
    prefill_us_per_token=10.0,
    attention_us_per_token_pair=0.01,
    tiers={H: TierCost(1e9, 5.0), S: TierCost(1e8, 100.0)},
)


def test_lru_order_shortfall_and_demote():
    snap = (cand("a", last=1.0), cand("b", last=3.0), cand("c", last=2.0), cand("d", last=2.0, depth=32))
    q = EvictionQuery(D, snap, 3, now=10.0, lower_tiers=(H,))
    d = LRUPolicy().select_victims(q)
    assert names(d) == ["a", "d", "c"]  # tie on last access: deeper first
    assert dests(d) == [None, None, None] and d.shortfall == 0
    d = LRUPolicy().select_victims(EvictionQuery(D, snap, 6, now=10.0))
    assert names(d) == ["a", "d", "c", "b"] and d.shortfall == 2
    snap2 = (cand("a", last=1.0), cand("b", last=2.0, present=[H]))
    d = LRUPolicy(PolicyOptions(demote=True)).select_victims(EvictionQuery(D, snap2, 2, now=3.0, lower_tiers=(H, S)))
    assert names(d) == ["a", "b"] and dests(d) == ["host", None]  # b already has a host copy


def test_cascade_to_parent_and_pinned_child_blocks_parent():
    # p <- x (leaf), p <- y (leaf); q (leaf); r <- z where r has a pinned child not in the snapshot
    snap = (
        cand("p", last=9.0, leaf=False, children=2),
        cand("x", last=5.0, parent="p", depth=16),
        cand("y", last=4.0, parent="p", depth=16),
        cand("q", last=6.0),
        cand("r", last=0.5, leaf=False, children=2),
        cand("z", last=1.0, parent="r", depth=16),
    )
    d = LRUPolicy().select_victims(EvictionQuery(D, snap, 10, now=10.0))
    assert names(d) == ["z", "y", "x", "q", "p"]
    assert d.shortfall == 5  # r never became a leaf


def test_lfu_order():
    snap = (cand("a", hits=5, last=1.0), cand("b", hits=1, last=3.0), cand("c", hits=1, last=2.0), cand("e", hits=0, last=9.0))
    d = LFUPolicy().select_victims(EvictionQuery(D, snap, 4, now=10.0))
    assert names(d) == ["e", "c", "b", "a"]


def test_cost_model_arithmetic():
    assert MODEL.recompute_us(0, 16) == pytest.approx(161.36)
    assert MODEL.recompute_us(4096, 16) == pytest.approx(816.72)
    assert MODEL.transfer_us(H, 16384) == pytest.approx(21.384)
    assert MODEL.transfer_us(S, 16384) == pytest.approx(263.84)
    assert MODEL.transfer_us(D, 16384) == 0.0
    with pytest.raises(ValueError, match="tiers with a cost"):
        MODEL.transfer_us(KVTier.REMOTE, 1)
    m = CostModel.from_flops(1e12, 10**9, 10, 1000, {H: TierCost(1e9)}, efficiency=0.5)
    assert m.prefill_us_per_token == pytest.approx(4000.0)
    assert m.attention_us_per_token_pair == pytest.approx(0.08)
    with pytest.raises(ValueError, match="non-device"):
        CostModel(1.0, tiers={D: TierCost(1.0)})


def test_cost_aware_host_eviction_order_and_tier_decisions():
    # evicting from HOST with SSD below:
    # a: depth 0    rec 161.36 < ssd 263.84 -> drop,  loss 161.36-21.384 = 139.976, rate 1/60
    # b: depth 4096 rec 816.72 > ssd        -> ssd,   loss 263.84-21.384 = 242.456, rate 1/60
    # c: depth 1024 rec 325.2  > ssd        -> ssd,   same loss as b, more recent
    # e: depth 0, 5 hits: rate 6/60           -> drop, score 13.9976 (kept longest)
    snap = (
        cand("e", H, depth=0, hits=5, last=9.5),
        cand("c", H, depth=1024, last=9.0),
        cand("b", H, depth=4096, last=8.0),
        cand("a", H, depth=0, last=9.9),
    )
    policy = CostAwarePolicy(PolicyOptions(cost_model=MODEL))
    q = EvictionQuery(H, snap, 4, now=10.0, lower_tiers=(S,))
    d = policy.select_victims(q)
    assert names(d) == ["a", "b", "c", "e"]
    assert dests(d) == [None, "ssd", "ssd", None]
    assert policy.score(snap[3], q) == pytest.approx(139.976 / 60)
    assert policy.score(snap[0], q) == pytest.approx(139.976 / 10)


def test_cost_aware_keeps_deep_prefix_that_lru_would_evict():
    # device, nothing below: loss = recompute cost. x is recent but short; y is old but deep.
    snap = (cand("y", depth=4096, last=1.0), cand("x", depth=0, last=100.0))
    q = EvictionQuery(D, snap, 1, now=100.0)
    assert names(LRUPolicy().select_victims(q)) == ["y"]
    assert names(CostAwarePolicy(PolicyOptions(cost_model=MODEL)).select_victims(q)) == ["x"]


def test_cost_aware_demote_decision_by_margin_and_existing_copy():
    snap = (cand("a", depth=0), cand("b", depth=0, present=[S]))
    q = EvictionQuery(D, snap, 2, now=1.0, lower_tiers=(H, S))
    d = CostAwarePolicy(PolicyOptions(cost_model=MODEL)).select_victims(q)
    assert dict(zip(names(d), dests(d))) == {"a": "host", "b": None}
    # margin 10: 21.384 * 10 > 161.36 -> recomputing wins, drop
    d = CostAwarePolicy(PolicyOptions(cost_model=MODEL, margin=10.0)).select_victims(q)
    assert dests(d) == [None, None]


def test_cost_aware_plan_load():
    policy = CostAwarePolicy(PolicyOptions(cost_model=MODEL))
    blocks = (
        LoadCandidate(h("0"), D, 0, 16, 16384),
        LoadCandidate(h("1"), H, 16, 16, 16384),
        LoadCandidate(h("2"), S, 32, 16, 16384),
        LoadCandidate(h("3"), S, 48, 16, 16384),
    )
    # short prefix: SSD reads (263.84) cost more than recomputing (166.48, 169.04)
    dec = policy.plan_load(LoadQuery(blocks))
    assert dec.num_blocks == 2
    assert dec.load_us == pytest.approx(21.384)
    assert dec.recompute_us == pytest.approx(166.48 + 169.04)
    assert dec.saved_us == pytest.approx(161.36 + 163.92 - 21.384)
    # deep in a long prefix, SSD blocks are worth reading
    deep = tuple(LoadCandidate(h(f"d{i}"), S, 8192 + 16 * i, 16, 16384) for i in range(2))
    assert policy.plan_load(LoadQuery(deep)).num_blocks == 2
    # stock policies load whatever matched
    assert LRUPolicy().plan_load(LoadQuery(blocks)).num_blocks == 4


def test_registry_strict_and_options():
    assert KV_POLICIES.names() == ("cost_aware", "lfu", "lru")
    assert isinstance(build_policy("lru"), LRUPolicy)
    assert isinstance(build_policy("lfu", PolicyOptions(demote=True)), LFUPolicy)
    assert isinstance(build_policy("cost_aware", PolicyOptions(cost_model=MODEL)), CostAwarePolicy)
    with pytest.raises(UnknownNameError, match=r"valid names: \['cost_aware', 'lfu', 'lru'\]"):
        build_policy("fifo")
    with pytest.raises(ValueError, match="cost_model"):
        build_policy("cost_aware")
    with pytest.raises(ValueError, match="margin"):
        PolicyOptions(margin=0)


def test_value_validation():
    with pytest.raises(ValueError, match="num_children"):
        cand("a", leaf=True, children=1)
    with pytest.raises(ValueError, match="slower than"):
        EvictAction(h("a"), H, D)
    with pytest.raises(ValueError, match="candidates on tier"):
        EvictionQuery(H, (cand("a", D),), 1, now=0.0)
    with pytest.raises(ValueError, match="present_tiers"):
        cand("a", D, present=[D])
