import pytest
import torch

from sagellm.core.kv import KVTier
from sagellm.core.kv_backend import KVBackendProtocol, LoadSpec, StoreSpec
from sagellm.kv_policy import LRUPolicy, PolicyOptions
from sagellm.kv_runtime import HostBlockPool, StoreHints, TierEvent, block_layout

from .conftest import SCHEMA, Clock, key, payload


def pool(n=4, **kw):
    return HostBlockPool(SCHEMA, n, clock=Clock(), **kw)


def test_two_phase_store_and_load_with_slot_views():
    p = pool()
    assert isinstance(p, KVBackendProtocol)
    assert p.pinned_memory is torch.cuda.is_available()
    plan = p.prepare_store(StoreSpec((key(1), key(2)), (7, 8), KVTier.HOST))
    assert plan.locations == ("0", "1") and plan.block_ids == (7, 8)
    assert p.contains((key(1),)) == 0  # reserved, not visible yet
    device_block = [torch.full(s.shape, float(i), dtype=s.dtype) for i, s in enumerate(block_layout(SCHEMA))]
    for dst, src in zip(p.slot_views(0), device_block):
        dst.copy_(src)
    p.write_slot(1, payload(2))
    p.complete_store(plan)
    assert p.drain_events() == (
        TierEvent(key(1), KVTier.HOST, True, "0"),
        TierEvent(key(2), KVTier.HOST, True, "1"),
    )
    load = p.prepare_load(LoadSpec((key(1), key(2), key(3)), (0, 1, 2), KVTier.HOST))
    assert load.keys == (key(1), key(2)) and load.skipped == (key(3),) and load.locations == ("0", "1")
    assert p.stats()[0].pinned_blocks == 2
    got = p.read(load)
    assert got.payloads[1] == payload(2)
    assert [int(t.view(-1)[0].item()) for t in p.slot_views(0)] == [0, 1, 2, 3]
    report = p.complete_load(load)
    assert report.loaded == (key(1), key(2))
    st = p.stats()[0]
    # misses: the contains() while reserved, and key 3 in the load
    assert (st.capacity_blocks, st.used_blocks, st.pinned_blocks, st.hits, st.misses) == (4, 2, 0, 2, 2)
    assert (st.stored_blocks, st.loaded_blocks, st.bytes_written, st.bytes_read) == (2, 2, 512, 512)
    # already held -> skipped; failed store frees its slot
    plan = p.prepare_store(StoreSpec((key(2), key(3)), (0, 0), KVTier.HOST))
    assert plan.skipped == (key(2),) and plan.locations == ("2",)
    p.complete_store(plan, success=False)
    assert p.pool_stats().free_slots == 2
    with pytest.raises(ValueError, match="reserved by an open prepare_store"):
        p.write_slot(2, payload(0))
    with pytest.raises(ValueError, match="open store ticket"):
        p.complete_store(plan)


def test_lru_capacity_eviction_reuses_slot():
    p = pool(3)
    p.put([key(1), key(2), key(3)], [payload(1), payload(2), payload(3)])
    assert p.get([key(1)]).keys == (key(1),)  # touch 1
    plan = p.put([key(4)], [payload(4)])
    assert plan.evicted == (key(2),) and plan.locations == ("1",)
    assert p.lookup(key(2)) is None and p.lookup(key(4)) == 1
    assert p.get([key(4)]).payloads == (payload(4),)
    assert TierEvent(key(2), KVTier.HOST, False) in p.drain_events()
    # pinned blocks are never victims: pin everything, a new store is refused
    load = p.prepare_load(LoadSpec((key(1), key(3), key(4)), (0, 0, 0), KVTier.HOST))
    plan = p.put([key(5)], [payload(5)])
    assert plan.keys == () and plan.skipped == (key(5),) and plan.evicted == ()
    p.complete_load(load)
    res = p.evict([key(1), key(9)])
    assert res.evicted == (key(1),) and res.not_found == (key(9),)


def test_tenant_quotas():
    p = pool(4, tenant_quotas={"t1": 2}, default_quota=None)
    t1, t2 = StoreHints("t1"), StoreHints("t2")
    p.put([key(1), key(2)], [payload(1), payload(2)], t1)  # slots 0, 1
    p.put([key(10)], [payload(10)], t2)  # slot 2
    plan = p.put([key(3)], [payload(3)], t1)  # over quota: t1's own oldest goes
    assert plan.evicted == (key(1),) and plan.locations == ("0",)
    # pin key 2; t1 stores again: only its unpinned block 3 can go
    load = p.prepare_load(LoadSpec((key(2),), (0,), KVTier.HOST))
    plan = p.put([key(4)], [payload(4)], t1)
    assert plan.evicted == (key(3),) and plan.keys == (key(4),)
    # pin key 4 too: t1 cannot make room under its quota -> refused, t2's block untouched
    load2 = p.prepare_load(LoadSpec((key(4),), (0,), KVTier.HOST))
    plan = p.put([key(5), key(6)], [payload(5), payload(6)], t1)
    assert plan.keys == () and plan.skipped == (key(5), key(6)) and plan.evicted == ()
    assert p.lookup(key(10)) == 2
    stats = p.pool_stats()
    assert dict(stats.tenant_slots) == {"t1": 2, "t2": 1}
    assert (stats.used_slots, stats.free_slots, stats.pinned_slots) == (3, 1, 2)
    p.complete_load(load)
    p.complete_load(load2)
    # a tenant with quota 0 is always refused
    q = pool(2, default_quota=0)
    assert q.put([key(1)], [payload(1)]).skipped == (key(1),)


def test_fragmentation_stats():
    p = pool(6)
    p.put([key(i) for i in range(6)], [payload(i) for i in range(6)])
    p.evict([key(1), key(3), key(4)])
    s = p.pool_stats()
    assert (s.free_slots, s.largest_free_run) == (3, 2)
    assert s.fragmentation == pytest.approx(1 - 2 / 3)
    assert s.occupancy == pytest.approx(0.5)
    assert p.put([key(9)], [payload(9)]).locations == ("1",)  # lowest free slot first


def test_writeback_sink_receives_demoted_victims():
    seen = []
    p = pool(2, policy=LRUPolicy(PolicyOptions(demote=True)))
    p.set_writeback(lambda k, data, hints: seen.append((k, data, hints.tenant, hints.depths)) or True)
    p.put([key(1)], [payload(1)], StoreHints("t", (16,)))
    p.put([key(2)], [payload(2)])
    p.put([key(3)], [payload(3)])
    assert seen == [(key(1), payload(1), "t", (16,))]
