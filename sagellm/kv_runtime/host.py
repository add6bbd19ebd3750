"""``HostBlockPool``: KV blocks in host DRAM, N fixed-size slots, two-phase store/load.

Storage is one ``[num_slots, bytes_per_block]`` uint8 tensor (pinned when CUDA is
available, so device<->host copies can be asynchronous); slot ``i`` holds one block laid
out as ``layout.block_layout(schema)``. ``slot_views(i)`` gives typed views to ``copy_``
device blocks into or out of.

Store::

    plan = pool.prepare_store(StoreSpec(keys, device_block_ids, KVTier.HOST), StoreHints(tenant="a"))
    for key, slot in zip(plan.keys, plan.locations):      # worker: device -> host
        for dst, src in zip(pool.slot_views(int(slot)), device_block_tensors(...)):
            dst.copy_(src, non_blocking=True)
    pool.complete_store(plan, success=True)               # publish (False: free the slots)

Load: ``prepare_load`` pins the longest held prefix, the worker copies out of
``slot_views``, ``complete_load`` unpins.

Room: when the pool is full, ``prepare_store`` asks its ``kv_policy`` policy for victims
among published, unpinned blocks; a victim the policy demotes to SSD is handed to the
write-back sink (``TieredKVStore`` wires the SSD store) before its slot is reused.

Quotas: ``tenant_quotas`` caps the slots each tenant holds. A tenant over its quota gets
its *own* blocks evicted first (by the policy); whatever still does not fit under the quota
is refused (``plan.skipped``). Other tenants' blocks are never evicted to make room for an
over-quota tenant.

Slots are handed out lowest-free-first, so slot ids are deterministic.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from sagellm.core.kv import KVCacheSchema, KVTier
from sagellm.core.kv_backend import (
    KVBlockKey,
    KVTransferPlan,
    LoadSpec,
    StoreSpec,
    TierStats,
    TransferDirection,
)
from sagellm.core.validation import check_float, check_int, invalid
from sagellm.kv_policy import BlockCandidate, EvictionPolicy, EvictionQuery, LRUPolicy
from sagellm.prefix_reuse import BlockLineage
from sagellm.kv_runtime._published import PublishedBlocks
from sagellm.kv_runtime.layout import Payload, as_byte_tensor, pack_block, typed_views
from sagellm.kv_runtime.types import LoadedBlocks, LoadReport, StoreHints, TierEvent

#: ``writeback(key, payload, hints) -> accepted``: called for a victim demoted below HOST.
WriteBack = Callable[[KVBlockKey, bytes, StoreHints], bool]


@dataclass
class _Entry:
    key: KVBlockKey
    slot: int
    hints: StoreHints  # this block's own hints (tenant, depth or lineage)
    last_access: float
    ticket: int | None = None  # reserving STORE ticket until published
    hit_count: int = 0
    pins: int = 0

    @property
    def tenant(self) -> str:
        return self.hints.tenant

    @property
    def depth(self) -> int:
        return self.hints.depth(0)

    @property
    def published(self) -> bool:
        return self.ticket is None


@dataclass(frozen=True)
class HostPoolStats:
    """Occupancy of a host pool.

    Attributes:
        num_slots / used_slots / free_slots: slot counts (used = published + reserved).
        reserved_slots: slots of stores not yet completed.
        pinned_slots: published slots an open load is reading.
        bytes_per_slot: payload bytes of one block.
        pinned_memory: whether the storage is page-locked.
        tenant_slots: slots held per tenant ("" = anonymous).
        largest_free_run: longest run of consecutive free slots.
        fragmentation: ``1 - largest_free_run / free_slots`` (0.0 when nothing or everything is free
            in one run): how scattered the free space is.
    """

    num_slots: int
    used_slots: int
    free_slots: int
    reserved_slots: int
    pinned_slots: int
    bytes_per_slot: int
    pinned_memory: bool
    tenant_slots: Mapping[str, int] = field(default_factory=dict)
    largest_free_run: int = 0
    fragmentation: float = 0.0

    @property
    def occupancy(self) -> float:
        return self.used_slots / self.num_slots if self.num_slots else 0.0


class HostBlockPool(PublishedBlocks):
    """Host-DRAM KV tier implementing ``KVBackendProtocol``.

    Args:
        schema: KV geometry; one slot = ``schema.bytes_per_block()`` bytes.
        num_slots: number of blocks the pool holds.
        policy: victim choice when full (default: ``LRUPolicy()``, dropping victims).
        tenant_quotas: max slots per tenant.
        default_quota: max slots for tenants not in ``tenant_quotas`` (None = unlimited).
        pin_memory: page-lock the storage; None = when CUDA is available.
        evict_fraction: when a store finds the pool full, free at least this fraction of the
            slots in one policy call (a low watermark), so a full pool does not snapshot and
            rank every block on every store. 0 = evict exactly what is needed.
        clock: time source for access stats.
    """

    name = "host_dram"

    def __init__(
        self,
        schema: KVCacheSchema,
        num_slots: int,
        *,
        policy: EvictionPolicy | None = None,
        tenant_quotas: Mapping[str, int] | None = None,
        default_quota: int | None = None,
        pin_memory: bool | None = None,
        evict_fraction: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        owner = type(self).__name__
        check_float(owner, "evict_fraction", evict_fraction, minimum=0.0)
        if evict_fraction > 1:
            raise invalid(owner, "evict_fraction", evict_fraction, "a number in [0, 1]")
        if not isinstance(schema, KVCacheSchema):
            raise invalid(owner, "schema", schema, "a KVCacheSchema")
        check_int(owner, "num_slots", num_slots, minimum=0)
        quotas = dict(tenant_quotas or {})
        for tenant, quota in quotas.items():
            if not isinstance(tenant, str):
                raise invalid(owner, "tenant_quotas", tenant, "tenant names (strings)")
            check_int(owner, f"tenant_quotas[{tenant!r}]", quota, minimum=0)
        if default_quota is not None:
            check_int(owner, "default_quota", default_quota, minimum=0)
        if policy is not None and not isinstance(policy, EvictionPolicy):
            raise invalid(owner, "policy", policy, "an EvictionPolicy or None")
        self.schema = schema
        self.num_slots = num_slots
        self.bytes_per_slot = schema.bytes_per_block()
        self.policy = policy if policy is not None else LRUPolicy()
        self.tenant_quotas = quotas
        self.default_quota = default_quota
        self.evict_batch = int(num_slots * evict_fraction)
        self.pinned_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.storage = torch.empty((num_slots, self.bytes_per_slot), dtype=torch.uint8, pin_memory=self.pinned_memory)
        self._clock = clock
        self._free: list[int] = list(range(num_slots))  # a heap
        self._entries: dict[KVBlockKey, _Entry] = {}
        self._slot_owner: dict[int, _Entry] = {}
        self._tickets: dict[int, tuple[TransferDirection, tuple[KVBlockKey, ...]]] = {}
        self._ticket_ids = itertools.count(1)
        self._writeback: WriteBack | None = None
        self._events: deque[TierEvent] = deque()
        self._lock = threading.RLock()
        self._hits = self._misses = 0
        self._stored = self._loaded = self._evicted = 0
        self._bytes_written = self._bytes_read = 0

    @classmethod
    def from_bytes(cls, schema: KVCacheSchema, capacity_bytes: int, **kwargs) -> HostBlockPool:
        """A pool of as many whole blocks as fit in ``capacity_bytes``."""
        check_int(cls.__name__, "capacity_bytes", capacity_bytes, minimum=0)
        return cls(schema, schema.blocks_in(capacity_bytes), **kwargs)

    def set_writeback(self, sink: WriteBack | None) -> None:
        """Where victims the policy demotes below HOST go (None = they are dropped)."""
        with self._lock:
            self._writeback = sink

    # ------------------------------------------------------------- slots

    def slot_tensor(self, slot: int) -> torch.Tensor:
        """The flat uint8 row of ``slot``."""
        self._check_slot(slot)
        return self.storage[slot]

    def slot_views(self, slot: int) -> list[torch.Tensor]:
        """Typed in-place views of ``slot`` in ``block_layout`` order (copy device blocks into them)."""
        self._check_slot(slot)
        return typed_views(self.schema, self.storage[slot], in_place=True)

    def write_slot(self, slot: int, payload: Payload | Sequence[torch.Tensor]) -> None:
        """Copy one block into a slot reserved by an open store.

        Args:
            payload: payload bytes, a flat uint8 tensor, or the block's tensors.

        Raises:
            ValueError: the slot is not reserved by an open store, or the payload has the wrong size.
        """
        with self._lock:
            entry = self._slot_owner.get(slot)
            if entry is None or entry.published:
                raise invalid(type(self).__name__, "slot", slot, "a slot reserved by an open prepare_store")
        if isinstance(payload, (list, tuple)):
            payload = pack_block(self.schema, payload)
        self.storage[slot].copy_(as_byte_tensor(payload, self.bytes_per_slot))

    def read_slot(self, slot: int) -> bytes:
        """The bytes of ``slot`` (a copy)."""
        self._check_slot(slot)
        return self.storage[slot].numpy().tobytes()

    def lineage(self, key: KVBlockKey) -> BlockLineage | None:
        """Lineage stored with a published ``key`` (None when unknown or absent)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.hints.lineage_of(0) if entry is not None and entry.published else None

    def lookup(self, key: KVBlockKey) -> int | None:
        """Slot of a published ``key``, else None."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.slot if entry is not None and entry.published else None

    def _check_slot(self, slot: int) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.num_slots:
            raise invalid(type(self).__name__, "slot", slot, f"an integer in [0, {self.num_slots})")

    # ------------------------------------------------------------- quotas / eviction

    def quota(self, tenant: str) -> int | None:
        """Slot quota of ``tenant`` (None = unlimited)."""
        return self.tenant_quotas.get(tenant, self.default_quota)

    def _tenant_used(self, tenant: str) -> int:
        return sum(1 for e in self._entries.values() if e.tenant == tenant)

    def _evict_for_room(self, n: int, tenant: str | None, protect: set[KVBlockKey]) -> list[KVBlockKey]:
        """Evict up to ``n`` published, unpinned blocks (of ``tenant`` only, when given)."""
        if n <= 0:
            return []
        by_hash: dict[bytes, _Entry] = {}
        for e in self._entries.values():
            if e.published and not e.pins and e.key not in protect and (tenant is None or e.tenant == tenant):
                by_hash.setdefault(e.key.block_hash, e)
        if not by_hash:
            return []
        cands = tuple(
            BlockCandidate.trusted(
                block_hash=h, tier=KVTier.HOST, depth=e.depth, num_tokens=self.schema.block_size,
                last_access=e.last_access, hit_count=e.hit_count, size_bytes=self.bytes_per_slot,
            )
            for h, e in by_hash.items()
        )
        lower = (KVTier.SSD,) if self._writeback is not None else ()
        decision = self.policy.select_victims(EvictionQuery(KVTier.HOST, cands, n, self._clock(), lower))
        evicted = []
        for action in decision.actions:
            entry = by_hash[action.block_hash]
            if action.to_tier is not None and self._writeback is not None:
                self._writeback(entry.key, self.read_slot(entry.slot), entry.hints)
            self._drop(entry)
            evicted.append(entry.key)
        return evicted

    def _drop(self, entry: _Entry) -> None:
        del self._entries[entry.key]
        del self._slot_owner[entry.slot]
        heapq.heappush(self._free, entry.slot)
        if entry.published:
            self._evicted += 1
            self._events.append(TierEvent(entry.key, KVTier.HOST, False))

    # ------------------------------------------------------------- protocol

    def prepare_store(self, spec: StoreSpec, hints: StoreHints | None = None) -> KVTransferPlan:
        """Reserve slots for the keys not held yet, evicting (policy, quota) if needed.

        Returns:
            A STORE plan; ``locations`` are slot ids as strings; ``skipped`` holds keys already
            held and keys refused for lack of room or quota; ``evicted`` the keys dropped (or
            written back) to make room.
        """
        hints = hints if hints is not None else StoreHints()
        hints.check(len(spec.keys))
        with self._lock:
            ticket = next(self._ticket_ids)
            held = {k for k in spec.keys if k in self._entries}
            new = [i for i, k in enumerate(spec.keys) if k not in held]
            protect = set(spec.keys)
            evicted: list[KVBlockKey] = []
            quota = self.quota(hints.tenant)
            if quota is not None:
                over = self._tenant_used(hints.tenant) + len(new) - quota
                evicted += self._evict_for_room(over, hints.tenant, protect)
                new = new[: max(0, quota - self._tenant_used(hints.tenant))]
            short = len(new) - len(self._free)
            if short > 0:
                evicted += self._evict_for_room(max(short, self.evict_batch), None, protect)
            new = new[: len(self._free)]
            now = self._clock()
            keys, block_ids, slots = [], [], []
            for i in new:
                key = spec.keys[i]
                slot = heapq.heappop(self._free)
                entry = _Entry(key, slot, hints.for_one(i), now, ticket=ticket)
                self._entries[key] = entry
                self._slot_owner[slot] = entry
                keys.append(key)
                block_ids.append(spec.block_ids[i])
                slots.append(str(slot))
            taken = set(keys)
            skipped = tuple(k for k in spec.keys if k not in taken)
            self._tickets[ticket] = (TransferDirection.STORE, tuple(keys))
            return KVTransferPlan(
                ticket=ticket, direction=TransferDirection.STORE, tier=spec.tier, keys=tuple(keys),
                block_ids=tuple(block_ids), locations=tuple(slots), skipped=skipped, evicted=tuple(evicted),
            )

    def _close(self, plan: KVTransferPlan, direction: TransferDirection) -> tuple[KVBlockKey, ...]:
        entry = self._tickets.get(plan.ticket)
        if entry is None or entry[0] is not direction:
            raise invalid(type(self).__name__, "plan.ticket", plan.ticket, f"an open {direction} ticket of this pool")
        del self._tickets[plan.ticket]
        return entry[1]

    def complete_store(self, plan: KVTransferPlan, success: bool = True) -> None:
        """Publish the plan's blocks (``success``) or free their slots."""
        with self._lock:
            keys = self._close(plan, TransferDirection.STORE)
            now = self._clock()
            for key in keys:
                entry = self._entries[key]
                if success:
                    entry.ticket = None
                    entry.last_access = now
                    self._stored += 1
                    self._bytes_written += self.bytes_per_slot
                    self._events.append(TierEvent(key, KVTier.HOST, True, str(entry.slot)))
                else:
                    self._drop(entry)

    def prepare_load(self, spec: LoadSpec) -> KVTransferPlan:
        """Pin the longest published prefix of ``spec.keys`` and count the hit."""
        with self._lock:
            n = self._leading(spec.keys)
            now = self._clock()
            for key in spec.keys[:n]:
                entry = self._entries[key]
                entry.pins += 1
                entry.hit_count += 1
                entry.last_access = now
            self._hits += n
            self._misses += len(spec.keys) - n
            ticket = next(self._ticket_ids)
            self._tickets[ticket] = (TransferDirection.LOAD, spec.keys[:n])
            return KVTransferPlan(
                ticket=ticket, direction=TransferDirection.LOAD, tier=spec.tier, keys=spec.keys[:n],
                block_ids=spec.block_ids[:n], locations=tuple(str(self._entries[k].slot) for k in spec.keys[:n]),
                skipped=spec.keys[n:],
            )

    def read(self, plan: KVTransferPlan) -> LoadedBlocks:
        """Copy out the payloads of an open LOAD plan (host reads cannot fail)."""
        return LoadedBlocks(plan.keys, tuple(self.read_slot(int(s)) for s in plan.locations))

    def complete_load(self, plan: KVTransferPlan, success: bool = True) -> LoadReport:
        """Unpin the plan's blocks."""
        with self._lock:
            keys = self._close(plan, TransferDirection.LOAD)
            for key in keys:
                self._entries[key].pins -= 1
            if success:
                self._loaded += len(keys)
                self._bytes_read += len(keys) * self.bytes_per_slot
            return LoadReport(plan.ticket, keys if success else ())

    def _is_published(self, entry: _Entry) -> bool:
        return entry.published

    def _drop_evicted(self, entry: _Entry) -> None:
        self._drop(entry)

    def stats(self) -> tuple[TierStats, ...]:
        with self._lock:
            pinned = sum(1 for e in self._entries.values() if e.pins or not e.published)
            return (
                TierStats(
                    tier=KVTier.HOST, capacity_blocks=self.num_slots, used_blocks=len(self._entries),
                    pinned_blocks=pinned, hits=self._hits, misses=self._misses, stored_blocks=self._stored,
                    loaded_blocks=self._loaded, evicted_blocks=self._evicted, bytes_written=self._bytes_written,
                    bytes_read=self._bytes_read,
                ),
            )

    def pool_stats(self) -> HostPoolStats:
        with self._lock:
            free = sorted(self._free)
            run = best = 0
            prev = None
            for s in free:
                run = run + 1 if prev is not None and s == prev + 1 else 1
                best = max(best, run)
                prev = s
            tenants: dict[str, int] = {}
            for e in self._entries.values():
                tenants[e.tenant] = tenants.get(e.tenant, 0) + 1
            return HostPoolStats(
                num_slots=self.num_slots,
                used_slots=len(self._entries),
                free_slots=len(free),
                reserved_slots=sum(1 for e in self._entries.values() if not e.published),
                pinned_slots=sum(1 for e in self._entries.values() if e.pins),
                bytes_per_slot=self.bytes_per_slot,
                pinned_memory=self.pinned_memory,
                tenant_slots=dict(sorted(tenants.items())),
                largest_free_run=best,
                fragmentation=1.0 - best / len(free) if free else 0.0,
            )

    def drain_events(self) -> tuple[TierEvent, ...]:
        """Events since the last drain, oldest first."""
        with self._lock:
            events = tuple(self._events)
            self._events.clear()
            return events

    # ------------------------------------------------------------- conveniences

    def put(
        self, keys: Sequence[KVBlockKey], payloads: Sequence[Payload], hints: StoreHints | None = None
    ) -> KVTransferPlan:
        """prepare_store + write_slot + complete_store for blocks already in host memory."""
        if len(keys) != len(payloads):
            raise invalid(type(self).__name__, "payloads", f"{len(payloads)} payloads", f"one per key ({len(keys)})")
        by_key = dict(zip(keys, payloads))
        plan = self.prepare_store(StoreSpec(tuple(keys), (0,) * len(keys), KVTier.HOST), hints)
        try:
            for key, slot in zip(plan.keys, plan.locations):
                self.write_slot(int(slot), by_key[key])
        except BaseException:
            self.complete_store(plan, success=False)
            raise
        self.complete_store(plan, success=True)
        return plan

    def get(self, keys: Sequence[KVBlockKey]) -> LoadedBlocks:
        """prepare_load + read + complete_load: the payloads of the longest held prefix."""
        plan = self.prepare_load(LoadSpec(tuple(keys), (0,) * len(keys), KVTier.HOST))
        try:
            return self.read(plan)
        finally:
            self.complete_load(plan, success=True)
