import pytest

from sagellm.core.kv import KVTier
from sagellm.core.kv_backend import KVBackendProtocol, StoreSpec
from sagellm.kv_policy import CostAwarePolicy, CostModel, LRUPolicy, PolicyOptions, TierCost
from sagellm.kv_runtime import HostBlockPool, SsdBlockStore, StoreHints, TierEvent, TieredKVStore, block_file_name
from sagellm.prefix_reuse import ROOT_PARENT, BlockLineage, BlockLocation

from .conftest import SCHEMA, Clock, key, payload


def build(tmp_path, host_policy, slots=2):
    host = HostBlockPool(SCHEMA, slots, policy=host_policy, clock=Clock())
    ssd = SsdBlockStore(tmp_path, SCHEMA, 100_000, fsync=False, clock=Clock())
    return TieredKVStore(host, ssd)


def test_host_victims_written_back_to_ssd(tmp_path):
    store = build(tmp_path, LRUPolicy(PolicyOptions(demote=True)))
    assert isinstance(store, KVBackendProtocol) and store.tiers == (KVTier.HOST, KVTier.SSD)
    lineage = (BlockLineage(ROOT_PARENT, bytes(16), 0), BlockLineage(key(1).block_hash, bytes(16), 4))
    store.offload([key(1), key(2)], [payload(1), payload(2)], StoreHints(lineage=lineage))
    plan = store.offload([key(3)], [payload(3)])
    assert plan.evicted == (key(2),)  # same last access: the deeper block (chain end) goes first
    assert store.flush(10)
    assert store.ssd.lineage(key(2)) == lineage[1]  # write-back keeps the lineage
    assert store.probe(key(1).block_hash).location == BlockLocation(host=0)
    assert store.probe(key(2).block_hash).location == BlockLocation(ssd=True)
    assert store.probe(key(3).block_hash) is None  # stored without lineage
    assert store.locate([key(1), key(2), key(3), key(4)]) == (KVTier.HOST, KVTier.SSD, KVTier.HOST, None)
    got = store.fetch([key(1), key(2), key(3), key(4)])
    assert got.keys == (key(1), key(2), key(3))
    assert got.tiers == (KVTier.HOST, KVTier.SSD, KVTier.HOST)
    assert got.payloads == (payload(1), payload(2), payload(3))
    events = store.drain_events()
    assert TierEvent(key(2), KVTier.HOST, False) in events
    assert TierEvent(key(2), KVTier.SSD, True, str(tmp_path / block_file_name(key(2)))) in events
    assert [s.tier for s in store.stats()] == [KVTier.HOST, KVTier.SSD]
    store.close()


def test_stock_lru_drops_host_victims(tmp_path):
    store = build(tmp_path, LRUPolicy())
    first = store.offload([key(1), key(2), key(3)], [payload(1), payload(2), payload(3)])
    assert first.skipped == (key(3),)  # a store never evicts its own batch
    store.offload([key(3)], [payload(3)])
    assert store.flush(10)
    assert store.locate([key(1), key(2), key(3)]) == (None, KVTier.HOST, KVTier.HOST)
    assert store.contains([key(1), key(2)]) == 0 and store.contains([key(2), key(3)]) == 2
    store.close()


def test_cost_aware_demotes_deep_blocks_and_drops_shallow_ones(tmp_path):
    model = CostModel(10.0, 0.01, {KVTier.HOST: TierCost(1e9, 5.0), KVTier.SSD: TierCost(1e8, 100.0)})
    store = build(tmp_path, CostAwarePolicy(PolicyOptions(cost_model=model)), slots=2)
    # 4-token blocks: recompute ~40 us at depth 0 (< SSD read ~102.6 us) but ~1400 us at depth 8192
    store.offload([key(1)], [payload(1)], StoreHints(depths=(0,)))
    store.offload([key(2)], [payload(2)], StoreHints(depths=(8192,)))
    store.offload([key(3), key(4)], [payload(3), payload(4)], StoreHints(depths=(4, 8196)))
    assert store.flush(10)
    assert store.locate([key(1), key(2), key(3), key(4)]) == (None, KVTier.SSD, KVTier.HOST, KVTier.HOST)
    store.close()


def test_fetch_stops_at_corrupt_ssd_block_and_routing(tmp_path):
    store = build(tmp_path, LRUPolicy(PolicyOptions(demote=True)), slots=1)
    store.offload([key(1)], [payload(1)])
    store.offload([key(2)], [payload(2)])
    store.offload([key(3)], [payload(3)])  # 1, 2 -> SSD; 3 on host
    assert store.flush(10)
    p = tmp_path / block_file_name(key(2))
    p.write_bytes(p.read_bytes()[:-3] + b"bad")
    got = store.fetch([key(1), key(2), key(3)])
    assert got.keys == (key(1),) and got.failed == (key(2),)
    assert store.locate([key(2)]) == (None,)
    plan = store.prepare_store(StoreSpec((key(5),), (4,), KVTier.HOST))
    store.write(plan, [payload(5)])
    store.complete_store(plan)
    assert store.evict([key(5), key(1), key(8)]).evicted == (key(5), key(1))
    with pytest.raises(ValueError, match="host, ssd"):
        store.backend(KVTier.REMOTE)
    with pytest.raises(ValueError, match="a host pool, an SSD store, or both"):
        TieredKVStore()
    store.close()
