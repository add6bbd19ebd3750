"""Small value types shared by the kv_runtime stores (beyond ``sagellm.core.kv_backend``)."""

from __future__ import annotations

from dataclasses import dataclass

from sagellm.core.kv import KVTier
from sagellm.core.kv_backend import KVBlockKey
from sagellm.core.validation import check_int, check_str, coerce_tuple, invalid
from sagellm.prefix_reuse import BlockLineage


@dataclass(frozen=True)
class StoreHints:
    """Facts about a store that ``StoreSpec`` does not carry (optional second argument of
    ``prepare_store``).

    Attributes:
        tenant: who the blocks are charged to ("" = anonymous, the default quota applies).
        depths: tokens before each key's block, aligned with ``StoreSpec.keys`` (lets a
            cost-aware policy value the block); empty = unknown (treated as 0).
        lineage: parent hash, token ids and depth of each key's block, aligned with the keys
            (``RadixIndex.lineage``); the SSD tier stores it in the file header so a restarted
            index can adopt the block after checking tokens. Give ``depths`` or ``lineage``.
    """

    tenant: str = ""
    depths: tuple[int, ...] = ()
    lineage: tuple[BlockLineage, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "tenant", self.tenant, allow_empty=True)
        depths = coerce_tuple(owner, "depths", self.depths, int, "integers >= 0")
        for d in depths:
            check_int(owner, "depths", d, minimum=0)
        object.__setattr__(self, "depths", depths)
        object.__setattr__(
            self, "lineage", coerce_tuple(owner, "lineage", self.lineage, BlockLineage, "BlockLineage")
        )
        if depths and self.lineage:
            raise invalid(owner, "depths", depths, "empty when lineage is given (lineage carries the depths)")

    def __len__(self) -> int:
        return len(self.lineage) or len(self.depths)

    def depth(self, index: int) -> int:
        if self.lineage:
            return self.lineage[index].depth
        return self.depths[index] if index < len(self.depths) else 0

    def lineage_of(self, index: int) -> BlockLineage | None:
        return self.lineage[index] if index < len(self.lineage) else None

    def check(self, num_keys: int) -> None:
        """Raise ``ValueError`` unless the per-key fields are empty or have one entry per key."""
        if len(self) and len(self) != num_keys:
            raise invalid(type(self).__name__, "depths/lineage", len(self), f"one entry per key ({num_keys}) or none")

    def for_one(self, index: int) -> StoreHints:
        """The hints of key ``index`` alone (for a write-back of that block)."""
        lineage = self.lineage_of(index)
        if lineage is not None:
            return StoreHints(self.tenant, lineage=(lineage,))
        return StoreHints(self.tenant, depths=(self.depth(index),))


@dataclass(frozen=True)
class TierEvent:
    """A block appeared on or left a tier. Drain them (``drain_events``) to keep the radix
    index's locations in step, including moves made by background writers and evictions.

    Attributes:
        key: the block.
        tier: the tier.
        present: True = now held (published); False = gone.
        location: the tier address when present (host slot as a string, SSD file path).
    """

    key: KVBlockKey
    tier: KVTier
    present: bool
    location: str = ""


@dataclass(frozen=True)
class LoadedBlocks:
    """Payloads read for a LOAD plan.

    Attributes:
        keys: keys read successfully, a prefix of the plan's keys.
        payloads: their bytes, aligned with ``keys``.
        failed: keys whose data was corrupt, truncated or missing: they were dropped from the
            tier and must be recomputed. Reading stops at the first failure.
    """

    keys: tuple[KVBlockKey, ...] = ()
    payloads: tuple[bytes, ...] = ()
    failed: tuple[KVBlockKey, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class LoadReport:
    """What ``complete_load`` closed: keys delivered and keys that failed verification."""

    ticket: int
    loaded: tuple[KVBlockKey, ...] = ()
    failed: tuple[KVBlockKey, ...] = ()
