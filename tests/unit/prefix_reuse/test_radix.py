import pytest

from sagellm.core.kv import KVTier
from sagellm.kv_policy import LRUPolicy, EvictionQuery
from sagellm.prefix_reuse import BlockLocation, PrefixNamespace, RadixIndex, block_hashes
from sagellm.prefix_reuse import hashing

BS = 4
NS = PrefixNamespace(model="m@1", block_size=BS)
A = list(range(0, 14))  # blocks a0 a1 a2 + 2 tokens
B = list(range(0, 8)) + [99, 98, 97, 96]  # shares a0 a1, then differs


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def dev(*ids):
    return [BlockLocation(device=i) for i in ids]


def make():
    return RadixIndex(BS, clock=Clock())


def test_insert_and_match_exact_blocks_and_tiers():
    idx = make()
    res = idx.insert(A, NS, dev(10, 11, 12))
    ha = block_hashes(A, BS, NS)
    assert res.hashes == res.new_hashes == tuple(ha)
    assert res.collision is False and res.conflicts == ()
    m = idx.match(A, NS)
    assert m.num_blocks == 3 and m.num_tokens == 12
    assert m.tiers == (KVTier.DEVICE,) * 3
    assert [b.location.device for b in m.blocks] == [10, 11, 12]
    assert [b.depth for b in m.blocks] == [0, 4, 8]
    assert m.hashes == tuple(ha)

    mb = idx.match(B, NS)
    assert mb.num_blocks == 2 and mb.num_tokens == 8 and mb.collision is False
    assert len(mb.hashes) == 3

    # inserting B shares a0 a1 and adds one node
    rb = idx.insert(B, NS, dev(10, 11, 20))
    assert rb.new_hashes == (block_hashes(B, BS, NS)[2],)
    assert len(idx) == 4
    # other namespace: nothing shared
    assert idx.match(A, PrefixNamespace("m@1", adapter="x", block_size=BS)).num_blocks == 0


def test_match_reports_fastest_tier_per_block_and_stops_where_no_tier_holds_it():
    idx = make()
    ha = block_hashes(A, BS, NS)
    idx.insert(A, NS, dev(10, 11, 12))
    idx.update_location(ha[1], KVTier.HOST, 3)
    idx.update_location(ha[1], KVTier.DEVICE, None)
    idx.update_location(ha[2], KVTier.SSD, True)
    idx.update_location(ha[2], KVTier.DEVICE, None)
    m = idx.match(A, NS)
    assert m.tiers == (KVTier.DEVICE, KVTier.HOST, KVTier.SSD)
    assert m.count_by_tier() == {KVTier.DEVICE: 1, KVTier.HOST: 1, KVTier.SSD: 1}
    assert m.leading_on(KVTier.DEVICE) == 1
    assert m.blocks[1].location == BlockLocation(host=3)

    # a1 gone from every tier but kept (its child a2 still has a copy): matching stops at a1
    upd = idx.update_location(ha[1], KVTier.HOST, None)
    assert upd.found and upd.previous == 3 and upd.pruned == ()
    assert ha[1] in idx
    assert idx.match(A, NS).num_blocks == 1


def test_stats_per_tier_exact():
    idx = make()
    ha = block_hashes(A, BS, NS)
    idx.insert(A, NS, [BlockLocation(device=1), BlockLocation(host=2), BlockLocation(ssd=True)])
    idx.match(A, NS)  # device hit, host hit, ssd hit
    idx.match(B, NS)  # device hit, host hit, 1 block missing everywhere
    idx.match(A, NS, record=False)
    s = idx.stats()
    assert s.lookups == 2
    assert s.query_blocks == 6 and s.query_tokens == 14 + 12
    assert dict(s.hits) == {KVTier.DEVICE: 2, KVTier.HOST: 2, KVTier.SSD: 1}
    assert dict(s.hit_tokens) == {KVTier.DEVICE: 8, KVTier.HOST: 8, KVTier.SSD: 4}
    # device misses: 2 host-served + 1 ssd-served + 1 missing; host: 1 ssd + 1 missing; ssd/remote: 1 missing
    assert dict(s.misses) == {KVTier.DEVICE: 4, KVTier.HOST: 2, KVTier.SSD: 1, KVTier.REMOTE: 1}
    assert s.miss_blocks == 1
    assert s.hit_rate(KVTier.DEVICE) == pytest.approx(2 / 6)
    assert s.total_hit_tokens == 20
    assert idx.get(ha[0]).hit_count == 2
    idx.reset_stats()
    assert idx.stats().lookups == 0


def test_forced_hash_collision_never_gives_a_false_hit(monkeypatch):
    # every block hash depends only on the parent hash: different tokens, same chain of hashes
    import hashlib

    monkeypatch.setattr(hashing, "_digest", lambda data: hashlib.blake2b(data[:16], digest_size=16).digest())
    idx = make()
    other = [50 + t for t in A]
    assert block_hashes(A, BS, NS) == block_hashes(other, BS, NS)
    idx.insert(A, NS, dev(1, 2, 3))
    m = idx.match(other, NS)
    assert m.num_blocks == 0 and m.collision is True
    res = idx.insert(other, NS, dev(4, 5, 6))
    assert res.num_blocks == 0 and res.collision is True
    assert idx.match(A, NS).num_blocks == 3  # the original is intact
    assert idx.stats().collisions == 2


def test_constant_hash_collision_inside_one_sequence(monkeypatch):
    monkeypatch.setattr(hashing, "_digest", lambda data: b"\x01" * 16)
    idx = make()
    res = idx.insert(A, NS, dev(1, 2, 3))
    assert res.num_blocks == 1 and res.collision is True  # block 1 would reuse block 0's hash
    m = idx.match(A, NS)
    assert m.num_blocks == 1  # only the real block 0; nothing is shared wrongly
    assert idx.match(B[4:] + A, NS).num_blocks == 0


def test_insert_merges_locations_and_reports_conflicts():
    idx = make()
    ha = block_hashes(A, BS, NS)
    idx.insert(A[:8], NS, dev(10, 11))
    res = idx.insert(A, NS, [BlockLocation(device=99, host=5), BlockLocation(device=11), BlockLocation(device=12)])
    assert res.new_hashes == (ha[2],)
    assert res.locations[0] == BlockLocation(device=10, host=5)
    assert [(c.block_hash, c.tier, c.existing, c.offered) for c in res.conflicts] == [(ha[0], KVTier.DEVICE, 10, 99)]
    with pytest.raises(ValueError, match="at most one per full block"):
        idx.insert(A, NS, dev(1, 2, 3, 4))
    with pytest.raises(ValueError, match="at least one tier"):
        idx.insert(B, NS, [BlockLocation(), BlockLocation(), BlockLocation()])


def test_leaves_per_tier_and_candidates():
    idx = make()
    ha = block_hashes(A, BS, NS)
    hb = block_hashes(B, BS, NS)
    idx.insert(A, NS, dev(10, 11, 12))  # t=1
    idx.insert(B, NS, dev(10, 11, 20))  # t=2
    assert set(idx.evictable(KVTier.DEVICE)) == {ha[2], hb[2]}
    assert idx.evictable(KVTier.DEVICE) == (ha[2], hb[2])  # older access first
    # a2 moves to host: on device a1 still has child b2; on host a2 is a leaf
    idx.update_location(ha[2], KVTier.HOST, 0)
    idx.update_location(ha[2], KVTier.DEVICE, None)
    assert idx.evictable(KVTier.DEVICE) == (hb[2],)
    assert idx.evictable(KVTier.HOST) == (ha[2],)
    cands = {c.block_hash: c for c in idx.candidates(KVTier.DEVICE, block_bytes=256)}
    assert set(cands) == {ha[0], ha[1], hb[2]}
    c1 = cands[ha[1]]
    assert (c1.is_leaf, c1.num_children, c1.parent_hash, c1.depth, c1.size_bytes) == (False, 1, ha[0], 4, 256)
    assert cands[ha[0]].parent_hash is None
    host = idx.candidates(KVTier.HOST)
    assert len(host) == 1 and host[0].present_tiers == frozenset() and host[0].depth == 8
    idx.update_location(ha[2], KVTier.SSD, True)
    assert idx.candidates(KVTier.HOST)[0].present_tiers == frozenset({KVTier.SSD})
    assert idx.evictable(KVTier.DEVICE, exclude={hb[2]}) == ()
    assert idx.num_blocks_on(KVTier.DEVICE) == 3


def test_policy_over_index_snapshot_evicts_chain_from_its_end():
    idx = make()
    ha = block_hashes(A, BS, NS)
    hb = block_hashes(B, BS, NS)
    idx.insert(A, NS, dev(10, 11, 12))  # t=1
    idx.insert(B, NS, dev(10, 11, 20))  # t=2 (a0, a1 touched again)
    q = EvictionQuery(KVTier.DEVICE, idx.candidates(KVTier.DEVICE), 4, now=10.0)
    decision = LRUPolicy().select_victims(q)
    assert decision.victims == (ha[2], hb[2], ha[1], ha[0])
    assert all(a.to_tier is None for a in decision.actions)


def test_update_location_prunes_and_remove():
    idx = make()
    ha = block_hashes(A, BS, NS)
    hb = block_hashes(B, BS, NS)
    idx.insert(A, NS, dev(10, 11, 12))
    idx.insert(B, NS, dev(10, 11, 20))
    assert idx.update_location(b"\x00" * 16, KVTier.HOST, None).found is False
    idx.update_location(ha[1], KVTier.DEVICE, None)  # inner block with children: kept
    assert ha[1] in idx
    with pytest.raises(ValueError, match="children"):
        idx.remove(ha[1])
    res = idx.update_location(hb[2], KVTier.DEVICE, None)
    assert res.pruned == (hb[2],)
    res = idx.update_location(ha[2], KVTier.DEVICE, None)
    assert res.pruned == (ha[2], ha[1])  # a1 had no copy left either
    assert len(idx) == 1
    removed = idx.remove(ha[0])
    assert [(r.block_hash, r.location.device) for r in removed.removed] == [(ha[0], 10)]
    assert len(idx) == 0 and idx.match(A, NS).num_blocks == 0
    with pytest.raises(KeyError):
        idx.remove(ha[0])


def test_remove_subtree_children_first():
    idx = make()
    ha = block_hashes(A, BS, NS)
    hb = block_hashes(B, BS, NS)
    idx.insert(A, NS, dev(10, 11, 12))
    idx.insert(B, NS, dev(10, 11, 20))
    removed = idx.remove(ha[1], subtree=True)
    hashes = [r.block_hash for r in removed.removed]
    assert set(hashes) == {ha[1], ha[2], hb[2]} and hashes[-1] == ha[1]
    assert len(idx) == 1 and idx.evictable(KVTier.DEVICE) == (ha[0],)


def test_access_hook_and_block_info():
    seen = []
    idx = RadixIndex(BS, clock=Clock(), on_access=lambda h, t: seen.append((h, t)))
    ha = block_hashes(A, BS, NS)
    idx.insert(A[:8], NS, dev(1, 2))
    idx.match(A, NS)
    assert seen == [(ha[0], 1.0), (ha[1], 1.0), (ha[0], 2.0), (ha[1], 2.0)]
    info = idx.get(ha[1])
    assert info.tokens == (4, 5, 6, 7) and info.depth == 4 and info.parent_hash == ha[0]
    assert info.hit_count == 1 and info.last_access == 2.0 and info.num_children == 0
