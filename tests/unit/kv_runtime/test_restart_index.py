"""A restarted radix index finds SSD blocks through the tier's probe, with the same token checks as a hit."""

import hashlib

from sagellm.core.kv import KVTier
from sagellm.core.kv_backend import KVBlockKey
from sagellm.kv_runtime import SsdBlockStore, StoreHints, TieredKVStore
from sagellm.prefix_reuse import ROOT_PARENT, BlockLocation, PrefixNamespace, RadixIndex, block_hashes, hashing

from .conftest import SCHEMA, payload

NS = PrefixNamespace("m@1", block_size=4)
A = list(range(20, 33))  # 3 full blocks
B = list(range(20, 24)) + [1, 2, 3, 4]  # shares A's first block


def populate(tmp_path, tokens):
    """First life: blocks computed on device, indexed, and written to SSD with their lineage."""
    index = RadixIndex(4)
    hashes = block_hashes(tokens, 4, NS)
    index.insert(tokens, NS, [BlockLocation(device=i) for i in range(len(hashes))])
    lineage = tuple(index.lineage(h) for h in hashes)
    assert lineage[0].parent_hash == ROOT_PARENT and lineage[1].parent_hash == hashes[0]
    assert lineage[2].tokens == (28, 29, 30, 31) and lineage[2].depth == 8
    with SsdBlockStore(tmp_path, SCHEMA, 100_000, fsync=False) as ssd:
        ssd.put([KVBlockKey(h) for h in hashes], [payload(i) for i in range(len(hashes))], StoreHints(lineage=lineage))
        assert ssd.flush(10)
    return hashes, lineage


def reopen(tmp_path):
    store = TieredKVStore(ssd=SsdBlockStore(tmp_path, SCHEMA, 100_000, fsync=False))
    return store, RadixIndex(4, probe=store.probe)


def test_restarted_index_adopts_ssd_blocks_after_token_check(tmp_path):
    hashes, lineage = populate(tmp_path, A)
    store, index = reopen(tmp_path)
    assert store.ssd.lineage(KVBlockKey(hashes[1])) == lineage[1]
    m = index.match(A, NS)
    assert m.num_blocks == 3 and m.tiers == (KVTier.SSD,) * 3 and m.adopted == 3
    assert index.match(A, NS).adopted == 0  # known now
    assert index.stats().adopted == 3
    got = store.fetch([KVBlockKey(h) for h in m.hashes])
    assert got.payloads == (payload(0), payload(1), payload(2))
    # B shares only the first block; its second block is on no tier
    mb = index.match(B, NS)
    assert mb.num_blocks == 1 and mb.collision is False
    # unknown prefixes leave no empty roots behind
    assert index.match([9, 9, 9, 9], PrefixNamespace("other", block_size=4)).num_blocks == 0
    assert len(index) == 3
    store.close()


def test_probe_never_adopts_a_colliding_block(tmp_path, monkeypatch):
    # hashes ignore tokens: A and C get identical chains, so C's lookups hit A's files
    monkeypatch.setattr(hashing, "_digest", lambda data: hashlib.blake2b(data[:16], digest_size=16).digest())
    C = [t + 100 for t in A]
    hashes, _ = populate(tmp_path, A)
    assert block_hashes(C, 4, NS) == hashes
    store, index = reopen(tmp_path)
    m = index.match(C, NS)
    assert m.num_blocks == 0 and m.collision is True and m.adopted == 0
    assert index.match(A, NS).num_blocks == 3
    store.close()


def test_blocks_without_lineage_are_not_adopted(tmp_path):
    hashes = block_hashes(A, 4, NS)
    with SsdBlockStore(tmp_path, SCHEMA, 100_000, fsync=False) as ssd:
        ssd.put([KVBlockKey(h) for h in hashes], [payload(i) for i in range(3)])
        assert ssd.flush(10)
    store, index = reopen(tmp_path)
    assert store.locate([KVBlockKey(h) for h in hashes]) == (KVTier.SSD,) * 3
    assert index.match(A, NS).num_blocks == 0
    store.close()
