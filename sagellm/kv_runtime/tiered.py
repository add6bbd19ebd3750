"""``TieredKVStore``: host DRAM in front of SSD, one ``KVBackendProtocol`` over both.

Ordering is host -> SSD, write-back: blocks are offloaded into the host pool; when the pool
needs room its policy picks victims, and a victim the policy *demotes* (``EvictAction.to_tier
== SSD``) is copied to the SSD store before its slot is reused (a dropped victim is gone).
SSD writes are asynchronous; the block shows up on SSD when its file is durable.

Transfers route by ``spec.tier`` / ``plan.tier`` to the tier's own store, so the two-phase
protocol is unchanged; ``locate`` says where each key is, and ``fetch`` reads the longest
available prefix across both tiers (verifying SSD checksums) for a worker thread::

    store = TieredKVStore(HostBlockPool(schema, 1024, policy=cost_aware),
                          SsdBlockStore(path, schema, 64 << 30, policy=cost_aware))
    store.locate(keys)            # (HOST, HOST, SSD, None, ...)
    got = store.fetch(keys)       # payloads of the leading available blocks, their tiers
    store.drain_events()          # TierEvents for the radix index (added/removed per tier)

The index (``prefix_reuse.RadixIndex``) stays the single view of where blocks are: apply
the drained events with ``update_location``, and build it with ``probe=store.probe`` so that
blocks it does not know (SSD blocks after a restart) are adopted after a token check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sagellm.core.kv import KVTier
from sagellm.core.kv_backend import EvictResult, KVBlockKey, KVTransferPlan, LoadSpec, StoreSpec, TierStats
from sagellm.core.validation import invalid
from sagellm.kv_runtime.host import HostBlockPool
from sagellm.kv_runtime.layout import Payload
from sagellm.kv_runtime.ssd import SsdBlockStore
from sagellm.kv_runtime.types import LoadedBlocks, LoadReport, StoreHints, TierEvent
from sagellm.prefix_reuse import BlockLocation, ProbedBlock


@dataclass(frozen=True)
class FetchResult:
    """The longest prefix of the requested keys available on host or SSD.

    Attributes:
        keys: keys delivered, a prefix of the request.
        payloads: their bytes.
        tiers: the tier each came from.
        failed: SSD blocks that failed verification (dropped; recompute from there on).
    """

    keys: tuple[KVBlockKey, ...] = ()
    payloads: tuple[bytes, ...] = ()
    tiers: tuple[KVTier, ...] = ()
    failed: tuple[KVBlockKey, ...] = ()

    @property
    def num_blocks(self) -> int:
        return len(self.keys)


class TieredKVStore:
    """Host pool and/or SSD store behind one ``KVBackendProtocol``.

    Args:
        host: the host DRAM tier (None = no host tier).
        ssd: the SSD tier (None = no SSD tier). With both, host victims the policy demotes
            are written back to ``ssd``.
    """

    name = "tiered"

    def __init__(self, host: HostBlockPool | None = None, ssd: SsdBlockStore | None = None) -> None:
        if host is None and ssd is None:
            raise invalid(type(self).__name__, "tiers", None, "a host pool, an SSD store, or both")
        if host is not None and not isinstance(host, HostBlockPool):
            raise invalid(type(self).__name__, "host", host, "a HostBlockPool or None")
        if ssd is not None and not isinstance(ssd, SsdBlockStore):
            raise invalid(type(self).__name__, "ssd", ssd, "an SsdBlockStore or None")
        self.host = host
        self.ssd = ssd
        if host is not None and ssd is not None:
            host.set_writeback(self._spill)

    @property
    def tiers(self) -> tuple[KVTier, ...]:
        return tuple(t for t, b in ((KVTier.HOST, self.host), (KVTier.SSD, self.ssd)) if b is not None)

    def backend(self, tier: KVTier) -> HostBlockPool | SsdBlockStore:
        """The store of ``tier``. Raises ``ValueError`` for a tier not configured."""
        tier = KVTier(tier)
        store = self.host if tier is KVTier.HOST else self.ssd if tier is KVTier.SSD else None
        if store is None:
            raise invalid(type(self).__name__, "tier", tier.value, "one of " + ", ".join(map(str, self.tiers)))
        return store

    def _spill(self, key: KVBlockKey, payload: bytes, hints: StoreHints) -> bool:
        """Write-back sink of the host pool: queue one evicted block for SSD."""
        ssd = self.backend(KVTier.SSD)
        plan = ssd.prepare_store(StoreSpec((key,), (0,), KVTier.SSD), hints)
        if plan.keys:
            ssd.write(plan, [payload])
        ssd.complete_store(plan, success=True)
        return bool(plan.keys)

    # ------------------------------------------------------------- lookups

    def locate(self, keys: Sequence[KVBlockKey]) -> tuple[KVTier | None, ...]:
        """Fastest tier holding each key (None = neither); does not stop at a miss, counts nothing."""
        out: list[KVTier | None] = []
        for key in keys:
            if self.host is not None and self.host.lookup(key) is not None:
                out.append(KVTier.HOST)
            elif self.ssd is not None and self.ssd.has(key):
                out.append(KVTier.SSD)
            else:
                out.append(None)
        return tuple(out)

    def probe(self, block_hash: bytes, namespace: str = "") -> ProbedBlock | None:
        """Where ``block_hash`` is held and its stored lineage, for ``RadixIndex(probe=...)``.

        Returns None when no tier holds the block or none stored its lineage (then the index
        cannot check its tokens and will not adopt it).
        """
        key = KVBlockKey(block_hash, namespace)
        slot = self.host.lookup(key) if self.host is not None else None
        on_ssd = self.ssd is not None and self.ssd.has(key)
        lineage = None
        if slot is not None and self.host is not None:
            lineage = self.host.lineage(key)
        if lineage is None and on_ssd and self.ssd is not None:
            lineage = self.ssd.lineage(key)
        if lineage is None or (slot is None and not on_ssd):
            return None
        return ProbedBlock(lineage, BlockLocation(host=slot, ssd=on_ssd))

    def contains(self, keys: Sequence[KVBlockKey]) -> int:
        """Leading keys held on some tier."""
        n = 0
        for tier in self.locate(keys):
            if tier is None:
                break
            n += 1
        return n

    def fetch(self, keys: Sequence[KVBlockKey]) -> FetchResult:
        """Read the longest available prefix of ``keys``, each block from its fastest tier.

        Runs of consecutive keys on one tier are read with one prepare/read/complete; SSD
        blocks are verified, and a bad one ends the prefix (it is dropped and reported).
        """
        keys = tuple(keys)
        tiers = self.locate(keys)
        got_keys: list[KVBlockKey] = []
        payloads: list[bytes] = []
        got_tiers: list[KVTier] = []
        i = 0
        while i < len(keys) and tiers[i] is not None:
            tier = tiers[i]
            j = i
            while j < len(keys) and tiers[j] is tier:
                j += 1
            loaded: LoadedBlocks = self.backend(tier).get(keys[i:j])
            got_keys += loaded.keys
            payloads += loaded.payloads
            got_tiers += [tier] * len(loaded.keys)
            if loaded.failed or len(loaded.keys) < j - i:
                return FetchResult(tuple(got_keys), tuple(payloads), tuple(got_tiers), loaded.failed)
            i = j
        return FetchResult(tuple(got_keys), tuple(payloads), tuple(got_tiers))

    # ------------------------------------------------------------- protocol (routed by tier)

    def prepare_store(self, spec: StoreSpec, hints: StoreHints | None = None) -> KVTransferPlan:
        return self.backend(spec.tier).prepare_store(spec, hints)

    def write(self, plan: KVTransferPlan, payloads: Sequence[Payload | Sequence[torch.Tensor]]) -> None:
        """Copy payloads into an open STORE plan's locations (host slots or queued SSD files)."""
        store = self.backend(plan.tier)
        if isinstance(store, SsdBlockStore):
            store.write(plan, payloads)
            return
        if len(payloads) != plan.num_blocks:
            raise invalid(type(self).__name__, "payloads", f"{len(payloads)} payloads", f"{plan.num_blocks}")
        for slot, payload in zip(plan.locations, payloads):
            store.write_slot(int(slot), payload)

    def complete_store(self, plan: KVTransferPlan, success: bool = True) -> None:
        self.backend(plan.tier).complete_store(plan, success)

    def prepare_load(self, spec: LoadSpec) -> KVTransferPlan:
        return self.backend(spec.tier).prepare_load(spec)

    def read(self, plan: KVTransferPlan) -> LoadedBlocks:
        return self.backend(plan.tier).read(plan)

    def complete_load(self, plan: KVTransferPlan, success: bool = True) -> LoadReport:
        return self.backend(plan.tier).complete_load(plan, success)

    def offload(
        self, keys: Sequence[KVBlockKey], payloads: Sequence[Payload], hints: StoreHints | None = None
    ) -> KVTransferPlan:
        """Store blocks already in host memory into the fastest configured tier."""
        return self.backend(self.tiers[0]).put(keys, payloads, hints)

    def evict(self, keys: Sequence[KVBlockKey]) -> EvictResult:
        """Drop ``keys`` from every tier (no write-back)."""
        results = [self.backend(t).evict(keys) for t in self.tiers]
        evicted = {k for r in results for k in r.evicted}
        pinned = {k for r in results for k in r.pinned}
        return EvictResult(
            evicted=tuple(k for k in keys if k in evicted),
            not_found=tuple(k for k in keys if k not in evicted and k not in pinned),
            pinned=tuple(k for k in keys if k in pinned),
        )

    def stats(self) -> tuple[TierStats, ...]:
        return tuple(s for t in self.tiers for s in self.backend(t).stats())

    def drain_events(self) -> tuple[TierEvent, ...]:
        """Host events, then SSD events, each oldest first."""
        return tuple(e for t in self.tiers for e in self.backend(t).drain_events())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued SSD writes (True when there is no SSD tier)."""
        return True if self.ssd is None else self.ssd.flush(timeout)

    def close(self) -> None:
        if self.ssd is not None:
            self.ssd.close()
