"""Value types policies read and return: snapshots in, actions out.

A policy never touches a cache. The caller (an index or a tier) takes a snapshot of
the blocks it could give up (``BlockCandidate``), asks a policy, and executes the
``EvictAction``s it gets back; at load time it asks ``plan_load`` how much of a hit to
load rather than recompute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sagellm.core.kv import KVTier
from sagellm.core.validation import check_float, check_int, coerce_enum, coerce_tuple, invalid

if TYPE_CHECKING:
    from sagellm.kv_policy.cost import CostModel
    from sagellm.kv_policy.lifetime import LifetimePredictor

#: Tiers from fastest to slowest; "demote" means "move one step right".
TIER_ORDER: tuple[KVTier, ...] = (KVTier.DEVICE, KVTier.HOST, KVTier.SSD, KVTier.REMOTE)


def tier_rank(tier: KVTier) -> int:
    """Position of ``tier`` in ``TIER_ORDER`` (0 = device)."""
    return TIER_ORDER.index(tier)


def tiers_below(tier: KVTier, configured: Sequence[KVTier]) -> tuple[KVTier, ...]:
    """The configured tiers slower than ``tier``, fastest first."""
    rank = tier_rank(tier)
    return tuple(t for t in TIER_ORDER if t in configured and tier_rank(t) > rank)


def _check_hash(owner: str, name: str, value: object) -> bytes:
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes) or not value:
        raise invalid(owner, name, value, "non-empty bytes")
    return value


@dataclass(frozen=True)
class BlockCandidate:
    """One block a tier could give up, as seen at snapshot time.

    Attributes:
        block_hash: the block's chained hash.
        tier: the tier holding the copy in question.
        depth: tokens *before* this block in its prefix (block index * block size).
        num_tokens: tokens in this block (the block size).
        last_access: time of the last hit or insert (any monotonic clock; same clock as
            ``EvictionQuery.now``).
        hit_count: prefix hits so far.
        size_bytes: bytes of the block's KV payload.
        is_leaf: no descendant block holds a copy on ``tier`` (evicting it cannot strand one).
        parent_hash: the previous block of the prefix, None for a first block. Lets a policy
            evict a parent in the same call once all its candidate children are gone.
        num_children: children holding a copy on ``tier``; 0 iff ``is_leaf``.
        present_tiers: other tiers already holding a copy.
    """

    block_hash: bytes
    tier: KVTier
    depth: int
    num_tokens: int
    last_access: float
    hit_count: int = 0
    size_bytes: int = 0
    is_leaf: bool = True
    parent_hash: bytes | None = None
    num_children: int = 0
    present_tiers: frozenset[KVTier] = frozenset()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "block_hash", _check_hash(owner, "block_hash", self.block_hash))
        object.__setattr__(self, "tier", coerce_enum(owner, "tier", self.tier, KVTier))
        check_int(owner, "depth", self.depth, minimum=0)
        check_int(owner, "num_tokens", self.num_tokens, minimum=1)
        check_float(owner, "last_access", self.last_access)
        check_int(owner, "hit_count", self.hit_count, minimum=0)
        check_int(owner, "size_bytes", self.size_bytes, minimum=0)
        check_int(owner, "num_children", self.num_children, minimum=0)
        if self.parent_hash is not None:
            object.__setattr__(self, "parent_hash", _check_hash(owner, "parent_hash", self.parent_hash))
        if self.is_leaf and self.num_children:
            raise invalid(owner, "num_children", self.num_children, "0 when is_leaf is True")
        present = frozenset(coerce_enum(owner, "present_tiers", t, KVTier) for t in self.present_tiers)
        if self.tier in present:
            raise invalid(owner, "present_tiers", sorted(map(str, present)), f"tiers other than {self.tier}")
        object.__setattr__(self, "present_tiers", present)

    @classmethod
    def trusted(
        cls,
        block_hash: bytes,
        tier: KVTier,
        depth: int,
        num_tokens: int,
        last_access: float,
        hit_count: int = 0,
        size_bytes: int = 0,
        is_leaf: bool = True,
        parent_hash: bytes | None = None,
        num_children: int = 0,
        present_tiers: frozenset[KVTier] = frozenset(),
    ) -> BlockCandidate:
        """Build without validation, for producers whose fields are already well-typed (an index
        or a tier snapshotting thousands of blocks); everyone else uses the constructor."""
        obj = object.__new__(cls)
        obj.__dict__.update(
            block_hash=block_hash, tier=tier, depth=depth, num_tokens=num_tokens, last_access=last_access,
            hit_count=hit_count, size_bytes=size_bytes, is_leaf=is_leaf, parent_hash=parent_hash,
            num_children=num_children, present_tiers=present_tiers,
        )
        return obj


@dataclass(frozen=True)
class EvictAction:
    """Remove ``block_hash``'s copy from ``from_tier``; copy it to ``to_tier`` first unless None.

    ``to_tier=None`` drops this copy; the block survives on any tier that already holds it
    (``BlockCandidate.present_tiers``), otherwise it is gone and will be recomputed.
    """

    block_hash: bytes
    from_tier: KVTier
    to_tier: KVTier | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "block_hash", _check_hash(owner, "block_hash", self.block_hash))
        object.__setattr__(self, "from_tier", coerce_enum(owner, "from_tier", self.from_tier, KVTier))
        if self.to_tier is not None:
            to = coerce_enum(owner, "to_tier", self.to_tier, KVTier)
            if tier_rank(to) <= tier_rank(self.from_tier):
                raise invalid(owner, "to_tier", to.value, f"a tier slower than {self.from_tier}")
            object.__setattr__(self, "to_tier", to)

    @property
    def drops(self) -> bool:
        return self.to_tier is None


@dataclass(frozen=True)
class EvictionQuery:
    """Ask a policy for ``num_blocks`` victims on ``tier``.

    Attributes:
        tier: the tier that needs room.
        candidates: blocks on ``tier`` that may be given up (pinned blocks left out).
        num_blocks: how many to free.
        now: current time on the candidates' clock.
        lower_tiers: tiers a victim may be demoted to, fastest first (only enabled tiers
            with room; empty = every victim is dropped).
    """

    tier: KVTier
    candidates: tuple[BlockCandidate, ...]
    num_blocks: int
    now: float
    lower_tiers: tuple[KVTier, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "tier", coerce_enum(owner, "tier", self.tier, KVTier))
        cands = coerce_tuple(owner, "candidates", self.candidates, BlockCandidate, "BlockCandidate")
        for c in cands:
            if c.tier is not self.tier:
                raise invalid(owner, "candidates", c.block_hash.hex(), f"candidates on tier {self.tier}")
        object.__setattr__(self, "candidates", cands)
        check_int(owner, "num_blocks", self.num_blocks, minimum=0)
        check_float(owner, "now", self.now)
        lower = tuple(coerce_enum(owner, "lower_tiers", t, KVTier) for t in self.lower_tiers)
        for t in lower:
            if tier_rank(t) <= tier_rank(self.tier):
                raise invalid(owner, "lower_tiers", [str(x) for x in lower], f"tiers slower than {self.tier}")
        object.__setattr__(self, "lower_tiers", lower)


@dataclass(frozen=True)
class EvictionDecision:
    """A policy's answer: actions in eviction order; ``shortfall`` blocks could not be found."""

    actions: tuple[EvictAction, ...] = ()
    shortfall: int = 0

    @property
    def victims(self) -> tuple[bytes, ...]:
        return tuple(a.block_hash for a in self.actions)


@dataclass(frozen=True)
class LoadCandidate:
    """One block of a prefix hit, in prefix order.

    Attributes:
        block_hash: the block's chained hash.
        tier: where the best copy is (``DEVICE`` = already resident, free to use).
        depth: tokens before this block.
        num_tokens: tokens in this block.
        size_bytes: payload bytes to move if loaded.
    """

    block_hash: bytes
    tier: KVTier
    depth: int
    num_tokens: int
    size_bytes: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "block_hash", _check_hash(owner, "block_hash", self.block_hash))
        object.__setattr__(self, "tier", coerce_enum(owner, "tier", self.tier, KVTier))
        check_int(owner, "depth", self.depth, minimum=0)
        check_int(owner, "num_tokens", self.num_tokens, minimum=1)
        check_int(owner, "size_bytes", self.size_bytes, minimum=0)


@dataclass(frozen=True)
class LoadQuery:
    """The matched blocks of one request, in prefix order."""

    blocks: tuple[LoadCandidate, ...]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "blocks", coerce_tuple(type(self).__name__, "blocks", self.blocks, LoadCandidate, "LoadCandidate")
        )


@dataclass(frozen=True)
class LoadDecision:
    """Use the first ``num_blocks`` matched blocks; recompute the rest.

    Attributes:
        num_blocks: leading blocks to use (load from their tier, or use in place on device).
        load_us: estimated time to move those blocks (0.0 when the policy has no cost model).
        recompute_us: estimated time to recompute the blocks not used.
        saved_us: estimated prefill time saved versus recomputing every matched block.
    """

    num_blocks: int
    load_us: float = 0.0
    recompute_us: float = 0.0
    saved_us: float = 0.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "num_blocks", self.num_blocks, minimum=0)
        for name in ("load_us", "recompute_us"):
            check_float(owner, name, getattr(self, name), minimum=0.0)
        if not math.isfinite(self.saved_us):
            raise invalid(owner, "saved_us", self.saved_us, "a finite number")


@dataclass(frozen=True)
class PolicyOptions:
    """Everything a policy may be built with; every policy takes one ``PolicyOptions``.

    Attributes:
        cost_model: recompute and transfer costs; required by ``cost_aware``.
        predictor: reuse predictor fed by access history (``cost_aware`` uses it; None =
            a fresh ``EWMAReusePredictor``).
        demote: ``lru``/``lfu`` only: send victims to the next lower tier instead of dropping
            them (stock LMDeploy drops).
        margin: ``cost_aware`` only: a victim is demoted when transfer cost * margin <
            recompute cost (> 1 = prefer recomputing).
    """

    cost_model: CostModel | None = None
    predictor: LifetimePredictor | None = field(default=None, compare=False)
    demote: bool = False
    margin: float = 1.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        from sagellm.kv_policy.cost import CostModel

        if self.cost_model is not None and not isinstance(self.cost_model, CostModel):
            raise invalid(owner, "cost_model", self.cost_model, "a CostModel or None")
        if not isinstance(self.demote, bool):
            raise invalid(owner, "demote", self.demote, "a bool")
        check_float(owner, "margin", self.margin, positive=True)
