"""``KVBackendProtocol``: one store of KV blocks (a tier, or several), keyed by chained block hashes.

Blocks are named by ``KVBlockKey``: the chained hash of a full block (the hash of
its tokens *and* of every block before it), so equal keys mean equal prefixes and
a lookup of a request's keys is only useful up to the first miss.

Moving data is two-phase, so the scheduler side speaks only in keys and device
block ids while workers move the bytes::

    plan = backend.prepare_store(StoreSpec(keys, block_ids, tier))   # reserve room, pin
    ...worker copies plan.block_ids -> plan.locations...
    backend.complete_store(plan, success=True)                     # publish (or roll back)

    plan = backend.prepare_load(LoadSpec(keys, block_ids, tier))     # pin the hit prefix
    ...worker copies plan.locations -> plan.block_ids...
    backend.complete_load(plan, success=True)                      # unpin

Eviction *choice* belongs to ``kv_policy``; a backend only executes ``evict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

from sagellm.core.kv import KVTier
from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import (
    check_int,
    check_str,
    coerce_enum,
    coerce_tuple,
    invalid,
)


@dataclass(frozen=True)
class KVBlockKey(SerializableMixin):
    """Identity of one full KV block.

    Attributes:
        block_hash: chained hash of the block (covers all earlier blocks); non-empty bytes.
        namespace: separates caches that must never share blocks (model, KV dtype,
            tensor-parallel rank...); "" = the default namespace.
    """

    block_hash: bytes
    namespace: str = ""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.block_hash, (bytearray, memoryview)):
            object.__setattr__(self, "block_hash", bytes(self.block_hash))
        if not isinstance(self.block_hash, bytes) or not self.block_hash:
            raise invalid(owner, "block_hash", self.block_hash, "non-empty bytes")
        check_str(owner, "namespace", self.namespace, allow_empty=True)

    def __str__(self) -> str:
        short = self.block_hash.hex()[:16]
        return f"{self.namespace}/{short}" if self.namespace else short


def _check_keys_and_blocks(owner: str, spec: StoreSpec | LoadSpec) -> None:
    keys = coerce_tuple(owner, "keys", spec.keys, KVBlockKey, "KVBlockKey")
    block_ids = coerce_tuple(owner, "block_ids", spec.block_ids, int, "integers >= 0")
    for block_id in block_ids:
        check_int(owner, "block_ids", block_id, minimum=0)
    if len(block_ids) != len(keys):
        raise invalid(owner, "block_ids", block_ids, f"one device block id per key ({len(keys)})")
    if len(set(keys)) != len(keys):
        raise invalid(owner, "keys", [str(k) for k in keys], "distinct keys")
    object.__setattr__(spec, "keys", keys)
    object.__setattr__(spec, "block_ids", block_ids)
    object.__setattr__(spec, "tier", coerce_enum(owner, "tier", spec.tier, KVTier))
    check_str(owner, "request_id", spec.request_id, allow_empty=True)


@dataclass(frozen=True)
class StoreSpec(SerializableMixin):
    """Request to copy device blocks into ``tier``.

    Attributes:
        keys: keys of the blocks, in prefix order.
        block_ids: device block ids holding those blocks, aligned with ``keys``.
        tier: destination tier.
        request_id: owning request, for tracing ("" = none).
    """

    keys: tuple[KVBlockKey, ...]
    block_ids: tuple[int, ...]
    tier: KVTier
    request_id: str = ""

    def __post_init__(self) -> None:
        _check_keys_and_blocks(type(self).__name__, self)


@dataclass(frozen=True)
class LoadSpec(SerializableMixin):
    """Request to copy blocks from ``tier`` into device blocks.

    Attributes:
        keys: keys wanted, in prefix order; loading stops at the first key the tier lacks.
        block_ids: destination device block ids, aligned with ``keys``.
        tier: source tier.
        request_id: owning request, for tracing ("" = none).
    """

    keys: tuple[KVBlockKey, ...]
    block_ids: tuple[int, ...]
    tier: KVTier
    request_id: str = ""

    def __post_init__(self) -> None:
        _check_keys_and_blocks(type(self).__name__, self)


class TransferDirection(str, Enum):
    STORE = "store"
    LOAD = "load"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class KVTransferPlan(SerializableMixin):
    """What ``prepare_store``/``prepare_load`` decided; workers execute it, ``complete_*`` closes it.

    Attributes:
        ticket: backend-unique id of this open transfer.
        direction: store or load.
        tier: the non-device side of the copy.
        keys: keys to move, in order.
        block_ids: device block ids, aligned with ``keys``.
        locations: tier-specific addresses (host slot, file path, remote URL), aligned with ``keys``.
        skipped: store: keys already in the tier (or refused for lack of room);
            load: keys the tier lacks (everything from the first miss on).
        evicted: store: keys removed from the tier to make room; load: always empty.
    """

    ticket: int
    direction: TransferDirection
    tier: KVTier
    keys: tuple[KVBlockKey, ...] = ()
    block_ids: tuple[int, ...] = ()
    locations: tuple[str, ...] = ()
    skipped: tuple[KVBlockKey, ...] = ()
    evicted: tuple[KVBlockKey, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "ticket", self.ticket, minimum=0)
        object.__setattr__(self, "direction", coerce_enum(owner, "direction", self.direction, TransferDirection))
        object.__setattr__(self, "tier", coerce_enum(owner, "tier", self.tier, KVTier))
        for name, elem, what in (
            ("keys", KVBlockKey, "KVBlockKey"),
            ("block_ids", int, "integers >= 0"),
            ("locations", str, "strings"),
            ("skipped", KVBlockKey, "KVBlockKey"),
            ("evicted", KVBlockKey, "KVBlockKey"),
        ):
            object.__setattr__(self, name, coerce_tuple(owner, name, getattr(self, name), elem, what))
        n = len(self.keys)
        if len(self.block_ids) != n:
            raise invalid(owner, "block_ids", self.block_ids, f"one device block id per key ({n})")
        if len(self.locations) != n:
            raise invalid(owner, "locations", self.locations, f"one location per key ({n})")
        if self.direction is TransferDirection.LOAD and self.evicted:
            raise invalid(owner, "evicted", [str(k) for k in self.evicted], "empty for a load")

    @property
    def num_blocks(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class EvictResult(SerializableMixin):
    """Outcome of ``evict``: which keys were dropped, which were absent, which were pinned."""

    evicted: tuple[KVBlockKey, ...] = ()
    not_found: tuple[KVBlockKey, ...] = ()
    pinned: tuple[KVBlockKey, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("evicted", "not_found", "pinned"):
            object.__setattr__(self, name, coerce_tuple(owner, name, getattr(self, name), KVBlockKey, "KVBlockKey"))


_STAT_COUNTERS = (
    "capacity_blocks",
    "used_blocks",
    "pinned_blocks",
    "hits",
    "misses",
    "stored_blocks",
    "loaded_blocks",
    "evicted_blocks",
    "bytes_written",
    "bytes_read",
)


@dataclass(frozen=True)
class TierStats(SerializableMixin):
    """Snapshot of one tier. Counters are cumulative since the backend started.

    Attributes:
        tier: which tier.
        capacity_blocks: blocks the tier can hold.
        used_blocks: blocks held now (published or reserved).
        pinned_blocks: held blocks an open transfer is using.
        hits / misses: keys found / not found by ``prepare_load`` and ``contains``.
        stored_blocks / loaded_blocks / evicted_blocks: blocks written, read, evicted.
        bytes_written / bytes_read: payload bytes moved into / out of the tier.
    """

    tier: KVTier
    capacity_blocks: int
    used_blocks: int = 0
    pinned_blocks: int = 0
    hits: int = 0
    misses: int = 0
    stored_blocks: int = 0
    loaded_blocks: int = 0
    evicted_blocks: int = 0
    bytes_written: int = 0
    bytes_read: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "tier", coerce_enum(owner, "tier", self.tier, KVTier))
        for name in _STAT_COUNTERS:
            check_int(owner, name, getattr(self, name), minimum=0)
        if self.used_blocks > self.capacity_blocks:
            raise invalid(owner, "used_blocks", self.used_blocks, f"<= capacity_blocks ({self.capacity_blocks})")
        if self.pinned_blocks > self.used_blocks:
            raise invalid(owner, "pinned_blocks", self.pinned_blocks, f"<= used_blocks ({self.used_blocks})")

    @property
    def free_blocks(self) -> int:
        return self.capacity_blocks - self.used_blocks

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    @property
    def usage(self) -> float:
        """used / capacity; 0.0 for a zero-capacity tier."""
        return self.used_blocks / self.capacity_blocks if self.capacity_blocks else 0.0


@runtime_checkable
class KVBackendProtocol(Protocol):
    """A store of KV blocks. Implementations live in ``kv_runtime``."""

    @property
    def name(self) -> str:
        """Registry name of the backend ("host_dram", "ssd", ...)."""
        ...

    def prepare_store(self, spec: StoreSpec) -> KVTransferPlan:
        """Reserve room for ``spec.keys`` not already held, evicting if the backend must.

        Returns:
            A STORE plan. Reserved keys stay invisible to ``contains``/loads until
            ``complete_store`` publishes them.
        """
        ...

    def complete_store(self, plan: KVTransferPlan, success: bool = True) -> None:
        """Publish the plan's keys, or release their reservations when ``success`` is False."""
        ...

    def prepare_load(self, spec: LoadSpec) -> KVTransferPlan:
        """Pin the longest held prefix of ``spec.keys``; return a LOAD plan for it."""
        ...

    def complete_load(self, plan: KVTransferPlan, success: bool = True) -> None:
        """Unpin the plan's keys."""
        ...

    def contains(self, keys: Sequence[KVBlockKey]) -> int:
        """Number of leading ``keys`` the backend holds (published), i.e. the prefix-hit length."""
        ...

    def evict(self, keys: Sequence[KVBlockKey]) -> EvictResult:
        """Drop the given keys; pinned keys are left in place and reported."""
        ...

    def stats(self) -> tuple[TierStats, ...]:
        """One snapshot per tier this backend holds."""
        ...
