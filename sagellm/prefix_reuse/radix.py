"""``RadixIndex``: one prefix index over every KV tier (device, host, SSD, remote).

One node per full block, children keyed by chained block hash, one root per namespace::

    root(ns) ── h0 [t0..t3] ── h1 [t4..t7] ── h2 [t8..t11]    device=7, host=2
                                          └── h2' [...]        ssd

Each node stores its block's token ids, so a hit is confirmed by comparing tokens: a hash
collision can cost a miss, never a false share. A node records *where* copies of its block
live (``BlockLocation``: device block id, host slot, SSD presence, remote URL) and its
access statistics; it never holds KV bytes -- those live in ``kv_runtime`` (SGLang's split
between the radix tree and its memory pools).

``match`` walks from the root and stops at the first block that is missing, differs in its
tokens, or has no copy on any tier. A node is a *leaf on tier T* when it has a copy on T
and none of its children does; only leaves are offered for eviction on T, so evicting
never strands a descendant's copy on the same tier.

Thread-safe: every public method takes one re-entrant lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from sagellm.core.kv import KVTier
from sagellm.core.validation import check_int, check_power_of_two, coerce_enum, invalid
from sagellm.kv_policy.types import TIER_ORDER, BlockCandidate, tier_rank
from sagellm.prefix_reuse.hashing import ROOT_PARENT, PrefixNamespace, block_hashes, namespace_bytes, token_bytes

Tokens = Sequence[int] | np.ndarray
LocationValue = int | bool | str | None


# ----------------------------------------------------------------- values


@dataclass(frozen=True)
class BlockLocation:
    """Where copies of one block live. An empty location means "nowhere".

    Attributes:
        device: device block id (LMDeploy physical/logical block), None = not on device.
        host: host pool slot, None = not in host memory.
        ssd: True when the SSD tier holds the block (the file is named by its hash).
        remote: remote address, None = not remote.
    """

    device: int | None = None
    host: int | None = None
    ssd: bool = False
    remote: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("device", "host"):
            value = getattr(self, name)
            if value is not None:
                check_int(owner, name, value, minimum=0)
        if not isinstance(self.ssd, bool):
            raise invalid(owner, "ssd", self.ssd, "a bool")
        if self.remote is not None and (not isinstance(self.remote, str) or not self.remote):
            raise invalid(owner, "remote", self.remote, "a non-empty string or None")

    def get(self, tier: KVTier) -> LocationValue:
        """The location on ``tier`` (False/None when absent)."""
        return getattr(self, KVTier(tier).value)

    def has(self, tier: KVTier) -> bool:
        value = self.get(tier)
        return value is not None and value is not False

    @property
    def tiers(self) -> tuple[KVTier, ...]:
        """Tiers holding a copy, fastest first."""
        return tuple(t for t in TIER_ORDER if self.has(t))

    @property
    def best_tier(self) -> KVTier | None:
        tiers = self.tiers
        return tiers[0] if tiers else None

    @property
    def is_empty(self) -> bool:
        return not self.tiers

    def with_tier(self, tier: KVTier, value: LocationValue) -> BlockLocation:
        """A copy with ``tier`` set to ``value`` (None or False clears it)."""
        tier = KVTier(tier)
        if tier is KVTier.SSD:
            if value is not None and not isinstance(value, bool):
                raise invalid("BlockLocation", "ssd", value, "True, False or None")
            return replace(self, ssd=bool(value))
        return replace(self, **{tier.value: value})


@dataclass(frozen=True)
class BlockLineage:
    """What identifies a block besides its hash: its parent and its tokens.

    Stored next to a block's bytes (the SSD header keeps it), it lets an index that lost
    its memory (a restart) adopt the block only after the same checks as a normal hit.

    Attributes:
        parent_hash: hash of the previous block; ``ROOT_PARENT`` for a prefix's first block.
        token_bytes: the block's token ids as little-endian int32 (``token_bytes(tokens)``).
        depth: tokens before the block.
    """

    parent_hash: bytes
    token_bytes: bytes
    depth: int

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("parent_hash", "token_bytes"):
            value = getattr(self, name)
            if isinstance(value, (bytearray, memoryview)):
                object.__setattr__(self, name, bytes(value))
            elif not isinstance(value, bytes):
                raise invalid(owner, name, value, "bytes")
        if not self.parent_hash:
            raise invalid(owner, "parent_hash", self.parent_hash, "non-empty bytes (ROOT_PARENT for a first block)")
        if not self.token_bytes or len(self.token_bytes) % 4:
            raise invalid(owner, "token_bytes", len(self.token_bytes), "a non-empty multiple of 4 bytes (int32 ids)")
        check_int(owner, "depth", self.depth, minimum=0)

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(int(t) for t in np.frombuffer(self.token_bytes, dtype="<i4"))


@dataclass(frozen=True)
class ProbedBlock:
    """Answer of a ``RadixIndex`` probe: a block some tier holds that the index does not know."""

    lineage: BlockLineage
    location: BlockLocation


@dataclass(frozen=True)
class MatchedBlock:
    """One block of a prefix hit.

    Attributes:
        block_hash: its chained hash.
        tier: the fastest tier holding it.
        location: every copy of it.
        depth: tokens before it.
    """

    block_hash: bytes
    tier: KVTier
    location: BlockLocation
    depth: int


@dataclass(frozen=True)
class MatchResult:
    """Outcome of ``RadixIndex.match``.

    Attributes:
        blocks: the matched full blocks, in prefix order.
        hashes: the hashes of *every* full block of the query (matched or not), so the caller
            can key stores and the later ``insert`` without rehashing.
        block_size: tokens per block.
        collision: True when matching stopped at a block whose hash was found but whose
            tokens (or parent) differ (a hash collision).
        adopted: matched blocks the index learnt from its probe during this match.
    """

    blocks: tuple[MatchedBlock, ...] = ()
    hashes: tuple[bytes, ...] = ()
    block_size: int = 1
    collision: bool = False
    adopted: int = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        """Matched tokens (always whole blocks)."""
        return len(self.blocks) * self.block_size

    @property
    def tiers(self) -> tuple[KVTier, ...]:
        """Fastest tier of each matched block."""
        return tuple(b.tier for b in self.blocks)

    def count_by_tier(self) -> dict[KVTier, int]:
        counts: dict[KVTier, int] = {}
        for b in self.blocks:
            counts[b.tier] = counts.get(b.tier, 0) + 1
        return counts

    def leading_on(self, tier: KVTier) -> int:
        """Leading matched blocks whose fastest copy is on ``tier`` (e.g. device-resident prefix)."""
        n = 0
        for b in self.blocks:
            if b.tier is not tier:
                break
            n += 1
        return n


@dataclass(frozen=True)
class LocationConflict:
    """``insert`` offered a location for a tier that already had a different one (the old one is kept)."""

    block_hash: bytes
    tier: KVTier
    existing: LocationValue
    offered: LocationValue


@dataclass(frozen=True)
class InsertResult:
    """Outcome of ``RadixIndex.insert``.

    Attributes:
        hashes: hashes of the blocks inserted or refreshed, in prefix order.
        new_hashes: the subset that created nodes.
        locations: each block's location after the insert, aligned with ``hashes``.
        conflicts: tiers where an existing, different location was kept (the caller owns the
            offered duplicate, e.g. frees its device block).
        collision: True when inserting stopped early at a hash collision.
    """

    hashes: tuple[bytes, ...] = ()
    new_hashes: tuple[bytes, ...] = ()
    locations: tuple[BlockLocation, ...] = ()
    conflicts: tuple[LocationConflict, ...] = ()
    collision: bool = False

    @property
    def num_blocks(self) -> int:
        return len(self.hashes)


@dataclass(frozen=True)
class LocationUpdate:
    """Outcome of ``update_location``.

    Attributes:
        found: the hash is in the index (an unknown hash changes nothing).
        previous: the location on that tier before the update.
        pruned: hashes removed because they were left with no copy and no children.
    """

    found: bool
    previous: LocationValue = None
    pruned: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class RemovedBlock:
    """A block taken out of the index, with the copies the caller must now free."""

    block_hash: bytes
    location: BlockLocation


@dataclass(frozen=True)
class RemoveResult:
    removed: tuple[RemovedBlock, ...] = ()


@dataclass(frozen=True)
class BlockInfo:
    """Snapshot of one node."""

    block_hash: bytes
    parent_hash: bytes | None
    tokens: tuple[int, ...]
    depth: int
    location: BlockLocation
    last_access: float
    hit_count: int
    num_children: int


@dataclass(frozen=True)
class PrefixHitStats:
    """Cumulative lookup statistics.

    Tiers are consulted fastest first: a block served from HOST counts as a DEVICE miss and a
    HOST hit; a block found nowhere (or after the first unusable block) is a miss on every
    tier. ``hit_rate(tier) = hits / (hits + misses)`` on that tier.

    Attributes:
        lookups: ``match`` calls recorded.
        query_blocks / query_tokens: full blocks / all tokens asked for.
        hits / hit_tokens: blocks and tokens served, by fastest tier.
        misses: blocks looked up on the tier and not found there.
        miss_blocks: full blocks not served by any tier.
        collisions: lookups stopped by a hash collision.
        adopted: blocks learnt from the probe (e.g. SSD blocks found after a restart).
    """

    lookups: int = 0
    query_blocks: int = 0
    query_tokens: int = 0
    hits: Mapping[KVTier, int] = field(default_factory=dict)
    hit_tokens: Mapping[KVTier, int] = field(default_factory=dict)
    misses: Mapping[KVTier, int] = field(default_factory=dict)
    miss_blocks: int = 0
    collisions: int = 0
    adopted: int = 0

    def hit_rate(self, tier: KVTier) -> float:
        h, m = self.hits.get(tier, 0), self.misses.get(tier, 0)
        return h / (h + m) if h + m else 0.0

    @property
    def total_hit_tokens(self) -> int:
        return sum(self.hit_tokens.values())


# ----------------------------------------------------------------- nodes


class _Node:
    __slots__ = ("block_hash", "parent", "children", "token_bytes", "depth", "location", "last_access",
                 "hit_count", "tier_children")

    def __init__(self, block_hash: bytes, parent: _Node | None, token_bytes: bytes, depth: int, now: float) -> None:
        self.block_hash = block_hash
        self.parent = parent
        self.children: dict[bytes, _Node] = {}
        self.token_bytes = token_bytes
        self.depth = depth  # block index in the prefix
        self.location = BlockLocation()
        self.last_access = now
        self.hit_count = 0
        self.tier_children: dict[KVTier, int] = {}  # children holding a copy on each tier

    def is_leaf_on(self, tier: KVTier) -> bool:
        return self.location.has(tier) and not self.tier_children.get(tier, 0)


class RadixIndex:
    """Prefix index over token blocks, shared by every tier.

    Args:
        block_size: tokens per block (a power of two); namespaces must agree.
        clock: time source for access stats (monotonic seconds by default).
        on_access: called as ``on_access(block_hash, when)`` on every hit and insert -- wire a
            ``LifetimePredictor.observe`` here.
        probe: called as ``probe(block_hash)`` by ``match`` for a block the index does not
            know (e.g. ``TieredKVStore.probe``: SSD blocks after a restart). A ``ProbedBlock``
            whose parent and tokens equal the query's is adopted as a node and matched; any
            difference stops the match like a collision.
    """

    def __init__(
        self,
        block_size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_access: Callable[[bytes, float], None] | None = None,
        probe: Callable[[bytes], ProbedBlock | None] | None = None,
    ) -> None:
        check_power_of_two(type(self).__name__, "block_size", block_size)
        self.block_size = block_size
        self._clock = clock
        self._on_access = on_access
        self._probe = probe
        self._roots: dict[bytes, _Node] = {}
        self._nodes: dict[bytes, _Node] = {}
        self._on_tier: dict[KVTier, set[_Node]] = {t: set() for t in TIER_ORDER}
        self._lock = threading.RLock()
        self.reset_stats()

    # ------------------------------------------------------------- helpers

    def _root(self, ns: bytes, create: bool) -> _Node | None:
        root = self._roots.get(ns)
        if root is None and create:
            root = _Node(b"", None, b"", -1, 0.0)
            self._roots[ns] = root
        return root

    def _prepare(self, tokens: Tokens, namespace: PrefixNamespace | bytes) -> tuple[bytes, list[bytes], bytes]:
        ns = namespace_bytes(namespace, self.block_size)
        return ns, block_hashes(tokens, self.block_size, ns), token_bytes(tokens)

    def _touch(self, node: _Node, now: float, hit: bool) -> None:
        node.last_access = now
        if hit:
            node.hit_count += 1
        if self._on_access is not None:
            self._on_access(node.block_hash, now)

    def _set_location(self, node: _Node, location: BlockLocation) -> None:
        old = node.location
        node.location = location
        parent = node.parent
        for tier in TIER_ORDER:
            had, has = old.has(tier), location.has(tier)
            if had == has:
                continue
            if has:
                self._on_tier[tier].add(node)
            else:
                self._on_tier[tier].discard(node)
            if parent is not None and parent.parent is not None:  # real parent, not a root
                parent.tier_children[tier] = parent.tier_children.get(tier, 0) + (1 if has else -1)

    def _detach(self, node: _Node) -> None:
        self._set_location(node, BlockLocation())
        parent = node.parent
        if parent is not None:
            parent.children.pop(node.block_hash, None)
        self._nodes.pop(node.block_hash, None)

    def _prune_up(self, node: _Node) -> list[bytes]:
        """Remove ``node`` and then its ancestors while they have no copy and no children."""
        pruned: list[bytes] = []
        while node.parent is not None and not node.children and node.location.is_empty:
            parent = node.parent
            self._detach(node)
            pruned.append(node.block_hash)
            node = parent
        if node.parent is None and not node.children:  # an empty root
            for ns, root in list(self._roots.items()):
                if root is node:
                    del self._roots[ns]
        return pruned

    # ------------------------------------------------------------- queries

    def match(self, tokens: Tokens, namespace: PrefixNamespace | bytes, *, record: bool = True) -> MatchResult:
        """Longest cached prefix of ``tokens`` (full blocks only).

        Args:
            tokens: the request's token ids.
            namespace: its ``PrefixNamespace`` (or the namespace bytes).
            record: count this lookup in the hit statistics and refresh the matched blocks'
                access stats; pass False for a re-check of the same request.

        Returns:
            ``MatchResult``: matched blocks (with the fastest tier of each) up to the first block
            that is missing, differs in its tokens, or has no copy anywhere.
        """
        ns, hashes, data = self._prepare(tokens, namespace)
        step = 4 * self.block_size
        with self._lock:
            node = self._root(ns, create=self._probe is not None and bool(hashes))
            blocks: list[MatchedBlock] = []
            collision = False
            adopted = 0
            if node is not None:
                for i, h in enumerate(hashes):
                    chunk = data[i * step : (i + 1) * step]
                    child = node.children.get(h)
                    if child is None and self._probe is not None:
                        child, collision = self._adopt(node, h, chunk, i)
                        adopted += child is not None
                    if child is None:
                        break
                    if child.token_bytes != chunk:
                        collision = True
                        break
                    tier = child.location.best_tier
                    if tier is None:
                        break
                    blocks.append(MatchedBlock(h, tier, child.location, i * self.block_size))
                    node = child
            if record:
                now = self._clock()
                for b in blocks:
                    self._touch(self._nodes[b.block_hash], now, hit=True)
                self._record(blocks, len(hashes), len(data) // 4, collision)
            self._adopted += adopted
            root = self._roots.get(ns)
            if root is not None and not root.children:
                self._prune_up(root)
            return MatchResult(tuple(blocks), tuple(hashes), self.block_size, collision, adopted)

    def _adopt(self, parent: _Node, block_hash: bytes, chunk: bytes, index: int) -> tuple[_Node | None, bool]:
        """Ask the probe about an unknown block; adopt it if parent and tokens check out.

        Returns (node or None, collision).
        """
        found = self._probe(block_hash) if self._probe is not None else None
        if found is None or found.location.is_empty:
            return None, False
        expected_parent = ROOT_PARENT if parent.parent is None else parent.block_hash
        lineage = found.lineage
        if lineage.parent_hash != expected_parent or lineage.token_bytes != chunk or block_hash in self._nodes:
            return None, True
        child = _Node(block_hash, parent, chunk, index, self._clock())
        parent.children[block_hash] = child
        self._nodes[block_hash] = child
        self._set_location(child, found.location)
        return child, False

    def _record(self, blocks: list[MatchedBlock], query_blocks: int, query_tokens: int, collision: bool) -> None:
        self._lookups += 1
        self._query_blocks += query_blocks
        self._query_tokens += query_tokens
        self._collisions += int(collision)
        for b in blocks:
            rank = tier_rank(b.tier)
            self._hits[b.tier] = self._hits.get(b.tier, 0) + 1
            self._hit_tokens[b.tier] = self._hit_tokens.get(b.tier, 0) + self.block_size
            for t in TIER_ORDER[:rank]:
                self._misses[t] = self._misses.get(t, 0) + 1
        missed = query_blocks - len(blocks)
        self._miss_blocks += missed
        if missed:
            for t in TIER_ORDER:
                self._misses[t] = self._misses.get(t, 0) + missed

    def insert(
        self,
        tokens: Tokens,
        namespace: PrefixNamespace | bytes,
        locations: Sequence[BlockLocation],
    ) -> InsertResult:
        """Record the first ``len(locations)`` full blocks of ``tokens`` and where they live.

        Existing blocks keep their locations; tiers they lack are filled from ``locations``,
        a different value on a tier they have is reported as a ``LocationConflict``. A new
        block needs at least one tier. Stops at a hash collision (``collision=True``).

        Raises:
            ValueError: more locations than full blocks, or an empty location for a new block.
        """
        ns, hashes, data = self._prepare(tokens, namespace)
        locs = tuple(locations)
        for loc in locs:
            if not isinstance(loc, BlockLocation):
                raise invalid("RadixIndex.insert", "locations", loc, "BlockLocation objects")
        if len(locs) > len(hashes):
            raise invalid(
                "RadixIndex.insert", "locations", f"{len(locs)} locations",
                f"at most one per full block ({len(hashes)})",
            )
        step = 4 * self.block_size
        with self._lock:
            now = self._clock()
            node = self._root(ns, create=True)
            done: list[bytes] = []
            new: list[bytes] = []
            final: list[BlockLocation] = []
            conflicts: list[LocationConflict] = []
            collision = False
            for i, (h, loc) in enumerate(zip(hashes, locs)):
                chunk = data[i * step : (i + 1) * step]
                child = node.children.get(h)
                if child is None:
                    if h in self._nodes:  # same hash elsewhere: a collision
                        collision = True
                        break
                    if loc.is_empty:
                        raise invalid("RadixIndex.insert", f"locations[{i}]", loc, "at least one tier for a new block")
                    child = _Node(h, node, chunk, i, now)
                    node.children[h] = child
                    self._nodes[h] = child
                    self._set_location(child, loc)
                    new.append(h)
                elif child.token_bytes != chunk:
                    collision = True
                    break
                else:
                    merged = child.location
                    for tier in loc.tiers:
                        offered = loc.get(tier)
                        if not merged.has(tier):
                            merged = merged.with_tier(tier, offered)
                        elif merged.get(tier) != offered:
                            conflicts.append(LocationConflict(h, tier, merged.get(tier), offered))
                    if merged != child.location:
                        self._set_location(child, merged)
                self._touch(child, now, hit=False)
                done.append(h)
                final.append(child.location)
                node = child
            if collision:
                self._collisions += 1
            if node.parent is None and not node.children:
                self._prune_up(node)
            return InsertResult(tuple(done), tuple(new), tuple(final), tuple(conflicts), collision)

    def update_location(self, block_hash: bytes, tier: KVTier, value: LocationValue) -> LocationUpdate:
        """Set (or clear, with None) ``block_hash``'s copy on ``tier``.

        A block left with no copy and no children is removed, and so are its ancestors that
        end up the same. An unknown hash changes nothing (``found=False``): tiers report
        events asynchronously and a block may have left the index meanwhile.
        """
        tier = coerce_enum("RadixIndex.update_location", "tier", tier, KVTier)
        with self._lock:
            node = self._nodes.get(block_hash)
            if node is None:
                return LocationUpdate(found=False)
            previous = node.location.get(tier)
            self._set_location(node, node.location.with_tier(tier, value))
            pruned = tuple(self._prune_up(node)) if node.location.is_empty and not node.children else ()
            return LocationUpdate(True, previous, pruned)

    def remove(self, block_hash: bytes, *, subtree: bool = False) -> RemoveResult:
        """Take a block out of the index, returning the copies the caller must free.

        Args:
            block_hash: the block.
            subtree: also remove its descendants (deepest first); without it a block with
                children is refused.

        Raises:
            KeyError: unknown hash.
            ValueError: the block has children and ``subtree`` is False.
        """
        with self._lock:
            node = self._nodes.get(block_hash)
            if node is None:
                raise KeyError(f"block {block_hash.hex()} is not in the index")
            if node.children and not subtree:
                raise ValueError(
                    f"block {block_hash.hex()} has {len(node.children)} children; remove them first or pass subtree=True"
                )
            order: list[_Node] = []
            stack = [node]
            while stack:
                n = stack.pop()
                order.append(n)
                stack.extend(n.children.values())
            removed = []
            for n in reversed(order):  # children before parents
                removed.append(RemovedBlock(n.block_hash, n.location))
                self._detach(n)
            parent = node.parent
            if parent is not None:
                if parent.parent is None:
                    self._prune_up(parent)
                elif parent.location.is_empty and not parent.children:
                    self._prune_up(parent)
            return RemoveResult(tuple(removed))

    def evictable(self, tier: KVTier, *, exclude: frozenset[bytes] | set[bytes] = frozenset()) -> tuple[bytes, ...]:
        """Hashes of the leaves on ``tier`` (no child has a copy there), oldest access first."""
        tier = coerce_enum("RadixIndex.evictable", "tier", tier, KVTier)
        with self._lock:
            leaves = [n for n in self._on_tier[tier] if n.is_leaf_on(tier) and n.block_hash not in exclude]
            leaves.sort(key=lambda n: (n.last_access, -n.depth, n.block_hash))
            return tuple(n.block_hash for n in leaves)

    def candidates(
        self,
        tier: KVTier,
        *,
        exclude: frozenset[bytes] | set[bytes] = frozenset(),
        block_bytes: int = 0,
        leaves_only: bool = False,
    ) -> tuple[BlockCandidate, ...]:
        """Snapshot of the blocks on ``tier`` for a ``kv_policy`` query.

        Args:
            tier: the tier needing room.
            exclude: hashes the caller cannot give up (blocks in use by running requests).
            block_bytes: payload bytes per block (``KVCacheSchema.bytes_per_block()``).
            leaves_only: only current leaves; otherwise inner blocks are included with
                ``parent_hash``/``num_children`` so a policy can cascade up a chain.
        """
        tier = coerce_enum("RadixIndex.candidates", "tier", tier, KVTier)
        with self._lock:
            nodes = sorted(self._on_tier[tier], key=lambda n: (n.depth, n.block_hash))
            out = []
            for n in nodes:
                if n.block_hash in exclude:
                    continue
                leaf = n.is_leaf_on(tier)
                if leaves_only and not leaf:
                    continue
                parent = n.parent.block_hash if n.parent is not None and n.parent.parent is not None else None
                out.append(
                    BlockCandidate.trusted(
                        block_hash=n.block_hash,
                        tier=tier,
                        depth=n.depth * self.block_size,
                        num_tokens=self.block_size,
                        last_access=n.last_access,
                        hit_count=n.hit_count,
                        size_bytes=block_bytes,
                        is_leaf=leaf,
                        parent_hash=parent,
                        num_children=n.tier_children.get(tier, 0),
                        present_tiers=frozenset(t for t in n.location.tiers if t is not tier),
                    )
                )
            return tuple(out)

    def get(self, block_hash: bytes) -> BlockInfo:
        """Snapshot of one block. Raises ``KeyError`` for an unknown hash."""
        with self._lock:
            node = self._nodes.get(block_hash)
            if node is None:
                raise KeyError(f"block {block_hash.hex()} is not in the index")
            parent = node.parent.block_hash if node.parent is not None and node.parent.parent is not None else None
            tokens = tuple(int(t) for t in np.frombuffer(node.token_bytes, dtype="<i4"))
            return BlockInfo(
                node.block_hash, parent, tokens, node.depth * self.block_size, node.location,
                node.last_access, node.hit_count, len(node.children),
            )

    def lineage(self, block_hash: bytes) -> BlockLineage:
        """Parent hash, token bytes and depth of a block (pass them to a tier with its bytes)."""
        with self._lock:
            node = self._nodes.get(block_hash)
            if node is None:
                raise KeyError(f"block {block_hash.hex()} is not in the index")
            parent = node.parent.block_hash if node.parent is not None and node.parent.parent is not None else ROOT_PARENT
            return BlockLineage(parent, node.token_bytes, node.depth * self.block_size)

    def location(self, block_hash: bytes) -> BlockLocation | None:
        with self._lock:
            node = self._nodes.get(block_hash)
            return None if node is None else node.location

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[bytes]:
        with self._lock:
            return iter(list(self._nodes))

    def num_blocks_on(self, tier: KVTier) -> int:
        return len(self._on_tier[KVTier(tier)])

    # ------------------------------------------------------------- stats

    def stats(self) -> PrefixHitStats:
        with self._lock:
            return PrefixHitStats(
                lookups=self._lookups,
                query_blocks=self._query_blocks,
                query_tokens=self._query_tokens,
                hits=MappingProxyType(dict(self._hits)),
                hit_tokens=MappingProxyType(dict(self._hit_tokens)),
                misses=MappingProxyType(dict(self._misses)),
                miss_blocks=self._miss_blocks,
                collisions=self._collisions,
                adopted=self._adopted,
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._lookups = 0
            self._query_blocks = 0
            self._query_tokens = 0
            self._hits: dict[KVTier, int] = {}
            self._hit_tokens: dict[KVTier, int] = {}
            self._misses: dict[KVTier, int] = {}
            self._miss_blocks = 0
            self._collisions = 0
            self._adopted = 0
