from __future__ import annotations

from collections.abc import Sequence

import pytest

from sagellm.core.kv import KVTier
from sagellm.core.kv_backend import (
    EvictResult,
    KVBackendProtocol,
    KVBlockKey,
    KVTransferPlan,
    LoadSpec,
    StoreSpec,
    TierStats,
    TransferDirection,
)


def key(i: int) -> KVBlockKey:
    return KVBlockKey(bytes([i]) * 8, namespace="m")


class DictBackend:
    """Smallest backend that satisfies the protocol; exercises the two-phase shape."""

    name = "dict"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.published: dict[KVBlockKey, int] = {}
        self.reserved: dict[int, tuple[KVBlockKey, ...]] = {}
        self.next_ticket = 0

    def prepare_store(self, spec: StoreSpec) -> KVTransferPlan:
        new = [(k, b) for k, b in zip(spec.keys, spec.block_ids) if k not in self.published]
        skipped = tuple(k for k in spec.keys if k in self.published)
        room = self.capacity - len(self.published) - sum(len(v) for v in self.reserved.values())
        take = new[:room]
        skipped += tuple(k for k, _ in new[room:])
        self.next_ticket += 1
        self.reserved[self.next_ticket] = tuple(k for k, _ in take)
        return KVTransferPlan(
            ticket=self.next_ticket, direction="store", tier=spec.tier,
            keys=tuple(k for k, _ in take), block_ids=tuple(b for _, b in take),
            locations=tuple(f"slot{i}" for i in range(len(take))), skipped=skipped,
        )

    def complete_store(self, plan: KVTransferPlan, success: bool = True) -> None:
        keys = self.reserved.pop(plan.ticket)
        if success:
            for k in keys:
                self.published[k] = 1

    def prepare_load(self, spec: LoadSpec) -> KVTransferPlan:
        n = self.contains(spec.keys)
        self.next_ticket += 1
        return KVTransferPlan(
            ticket=self.next_ticket, direction=TransferDirection.LOAD, tier=spec.tier,
            keys=spec.keys[:n], block_ids=spec.block_ids[:n], locations=tuple("x" for _ in range(n)),
            skipped=spec.keys[n:],
        )

    def complete_load(self, plan: KVTransferPlan, success: bool = True) -> None:
        pass

    def contains(self, keys: Sequence[KVBlockKey]) -> int:
        n = 0
        for k in keys:
            if k not in self.published:
                break
            n += 1
        return n

    def evict(self, keys: Sequence[KVBlockKey]) -> EvictResult:
        gone = tuple(k for k in keys if self.published.pop(k, None) is not None)
        return EvictResult(evicted=gone, not_found=tuple(k for k in keys if k not in gone))

    def stats(self) -> tuple[TierStats, ...]:
        return (TierStats(tier=KVTier.HOST, capacity_blocks=self.capacity, used_blocks=len(self.published)),)


def test_protocol_is_runtime_checkable():
    assert isinstance(DictBackend(4), KVBackendProtocol)
    assert not isinstance(object(), KVBackendProtocol)


def test_two_phase_store_then_prefix_load():
    b = DictBackend(capacity=3)
    plan = b.prepare_store(StoreSpec(keys=[key(1), key(2), key(3), key(4)], block_ids=[10, 11, 12, 13], tier="host"))
    assert plan.direction is TransferDirection.STORE and plan.tier is KVTier.HOST
    assert plan.keys == (key(1), key(2), key(3))
    assert plan.block_ids == (10, 11, 12)
    assert plan.skipped == (key(4),)
    assert b.contains([key(1)]) == 0  # reserved, not yet published
    b.complete_store(plan)
    assert b.contains([key(1), key(2), key(9), key(3)]) == 2
    load = b.prepare_load(LoadSpec(keys=(key(1), key(2), key(9)), block_ids=(5, 6, 7), tier=KVTier.HOST))
    assert load.keys == (key(1), key(2)) and load.block_ids == (5, 6) and load.skipped == (key(9),)
    assert b.evict([key(1), key(9)]) == EvictResult(evicted=(key(1),), not_found=(key(9),))


def test_block_key():
    k = KVBlockKey(bytearray(b"\x01\x02"), namespace="qwen")
    assert k.block_hash == b"\x01\x02"
    assert str(k) == "qwen/0102"
    assert hash(k) == hash(KVBlockKey(b"\x01\x02", "qwen"))
    assert KVBlockKey.from_dict(k.to_dict()) == k
    assert k.to_dict() == {"block_hash": "0102", "namespace": "qwen"}
    with pytest.raises(ValueError, match=r"KVBlockKey.block_hash: got b''; accepted: non-empty bytes"):
        KVBlockKey(b"")
    with pytest.raises(ValueError, match="accepted: non-empty bytes"):
        KVBlockKey("abcd")  # type: ignore[arg-type]


def test_spec_validation():
    with pytest.raises(ValueError, match=r"StoreSpec.block_ids: got \(1,\); accepted: one device block id per key \(2\)"):
        StoreSpec(keys=(key(1), key(2)), block_ids=(1,), tier="host")
    with pytest.raises(ValueError, match="LoadSpec.keys: .*accepted: distinct keys"):
        LoadSpec(keys=(key(1), key(1)), block_ids=(1, 2), tier="ssd")
    with pytest.raises(ValueError, match="StoreSpec.tier: got 'disk'; accepted: one of 'device', 'host', 'ssd', 'remote'"):
        StoreSpec(keys=(key(1),), block_ids=(1,), tier="disk")
    with pytest.raises(ValueError, match="StoreSpec.block_ids: got -1; accepted: an integer >= 0"):
        StoreSpec(keys=(key(1),), block_ids=(-1,), tier="host")


def test_spec_and_plan_round_trip():
    spec = StoreSpec(keys=(key(1), key(2)), block_ids=(3, 4), tier=KVTier.SSD, request_id="r1")
    assert StoreSpec.from_json(spec.to_json()) == spec
    plan = KVTransferPlan(ticket=1, direction="store", tier="ssd", keys=(key(1),), block_ids=(3,),
                          locations=("/kv/01.bin",), evicted=(key(7),))
    assert KVTransferPlan.from_yaml(plan.to_yaml()) == plan
    assert plan.num_blocks == 1


def test_plan_validation():
    with pytest.raises(ValueError, match="KVTransferPlan.locations: got \\(\\); accepted: one location per key \\(1\\)"):
        KVTransferPlan(ticket=0, direction="load", tier="host", keys=(key(1),), block_ids=(1,))
    with pytest.raises(ValueError, match="KVTransferPlan.evicted: .*accepted: empty for a load"):
        KVTransferPlan(ticket=0, direction="load", tier="host", evicted=(key(1),))


def test_tier_stats():
    s = TierStats(tier="host", capacity_blocks=10, used_blocks=4, pinned_blocks=1, hits=3, misses=1)
    assert s.free_blocks == 6
    assert s.hit_rate == 0.75
    assert s.usage == 0.4
    assert TierStats(tier="ssd", capacity_blocks=0).hit_rate == 0.0
    assert TierStats.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match=r"TierStats.used_blocks: got 11; accepted: <= capacity_blocks \(10\)"):
        TierStats(tier="host", capacity_blocks=10, used_blocks=11)
    with pytest.raises(ValueError, match=r"TierStats.pinned_blocks: got 2; accepted: <= used_blocks \(1\)"):
        TierStats(tier="host", capacity_blocks=10, used_blocks=1, pinned_blocks=2)
    with pytest.raises(ValueError, match="TierStats.hits: got -1; accepted: an integer >= 0"):
        TierStats(tier="host", capacity_blocks=1, hits=-1)
