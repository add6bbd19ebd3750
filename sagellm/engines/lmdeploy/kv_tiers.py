"""Hierarchical prefix reuse for LMDeploy: device blocks -> host DRAM -> SSD.

Plugs into patches 0002/0003 (``lmdeploy.pytorch.paging.hooks``):

- ``before_trie_evict``: LMDeploy's prefix trie is dropping a cached block; copy it into the
  host/SSD tiers first (write-back on eviction), keyed by its chained content hash.
- ``after_prefix_match``: the trie matched a waiting sequence's prefix on device; continue the
  match on host/SSD, copy the found blocks into freshly allocated device blocks, link them
  into the trie and move the sequence's computed-prefix boundary past them.

A block is only used after its stored token ids equal the request's (no false sharing) and,
for SSD, after its checksum verified; anything else is a miss and is recomputed.

The copies touch LMDeploy's cache tensors directly, so the tiers need the cache engine in the
scheduler's process (LMDeploy's ``uni`` executor, used for tp=1 and on the cpu device); with
another executor they stay off with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lmdeploy.pytorch.paging.block_trie import Node
from lmdeploy.pytorch.paging.hooks import KVCacheHooks

from sagellm.core.config import load_config
from sagellm.engines.lmdeploy.kv_hook_chain import add_kv_hooks, find_kv_hooks
from sagellm.core.kv import KVCacheSchema, KVTier
from sagellm.core.kv_backend import KVBlockKey
from sagellm.kv_policy import PolicyOptions, build_policy
from sagellm.kv_policy.cost import CostModel, TierCost
from sagellm.kv_runtime import HostBlockPool, SsdBlockStore, StoreHints, TieredKVStore, pack_block, unpack_block
from sagellm.kv_runtime.layout import pack_stacked, stacked_shape, unpack_stacked
from sagellm.kv_runtime.config import KVTierConfig
from sagellm.prefix_reuse import ROOT_PARENT, BlockLineage, PrefixNamespace, block_hashes, token_bytes
from sagellm.telemetry import metrics

logger = logging.getLogger("sagellm.kv_tiers")

_GIB = 1 << 30
_HASH_ATTR = "_sagellm_block_hash"
_TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


#: ``TierHitStats.seconds``: time spent in the hooks on the engine's loop, per hook.
HOOK_TIMERS = ("restore", "writeback", "release")

#: Why a restore stopped short of the prompt's last full block (``TierHitStats.restore_stops``).
RESTORE_STOPS = ("not_stored", "lineage", "trie_conflict", "no_device_block")


@dataclass
class TierHitStats:
    """Prefix tokens served per tier, restored blocks that failed verification, and why restores stopped."""

    lookups: int = 0
    hit_tokens: dict[str, int] = field(default_factory=lambda: {"device": 0, "host": 0, "ssd": 0})
    offloaded_blocks: int = 0
    restored_blocks: int = 0
    rejected_blocks: int = 0
    restore_stops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTORE_STOPS, 0))
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HOOK_TIMERS, 0.0))

    def as_dict(self) -> dict:
        return {
            "lookups": self.lookups,
            "hit_tokens": dict(self.hit_tokens),
            "offloaded_blocks": self.offloaded_blocks,
            "restored_blocks": self.restored_blocks,
            "rejected_blocks": self.rejected_blocks,
            "restore_stops": dict(self.restore_stops),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


def _timed(bucket: str):
    """Add the wall time of a hook to ``self.stats.seconds[bucket]`` (all of it runs on the engine's loop)."""

    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args):
            started = time.perf_counter()
            try:
                return method(self, *args)
            finally:
                self.stats.seconds[bucket] += time.perf_counter() - started

        return timed

    return wrap


def model_identity(model_path: str) -> str:
    """A stable identity of the weights: digest of config.json and the weight files' names and sizes."""
    root = Path(model_path)
    digest = hashlib.blake2b(digest_size=16)
    config = root / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


def cache_schema(cache_engine) -> KVCacheSchema:
    """The block layout of LMDeploy's device cache: (layers, blocks, block_size, kv_heads, head_dim) for K and V."""
    key_cache = cache_engine.full_gpu_cache[0]
    layers, _, block_size, kv_heads, head_dim = key_cache.shape
    value_dim = cache_engine.full_gpu_cache[1].shape[-1]
    return KVCacheSchema(
        num_layers=layers,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=_TORCH_DTYPE_NAMES[key_cache.dtype],
        v_head_dim=None if value_dim == head_dim else value_dim,
    )


#: Blocks the host tier frees at least per eviction, when it holds that many 8-fold: each eviction
#: scans the pool and runs the policy, and one block per device-trie eviction made that scan the
#: largest cost of a prefix restore (multi-turn chat, 64-block host tier).
HOST_EVICT_MIN_BLOCKS = 8


def host_evict_fraction(num_slots: int) -> float:
    """``HostBlockPool.evict_fraction``: 1% of the pool, or ``HOST_EVICT_MIN_BLOCKS`` if more, at most 1/8."""
    if num_slots <= 0:
        return 0.01
    return max(0.01, min(HOST_EVICT_MIN_BLOCKS / num_slots, 0.125))


def build_store(config: KVTierConfig, schema: KVCacheSchema) -> TieredKVStore:
    lower = [KVTier.SSD] if "ssd" in config.kv_tiers else []
    options = PolicyOptions(demote=bool(lower))
    if config.kv_policy == "cost_aware":
        options = PolicyOptions(
            cost_model=CostModel(
                prefill_us_per_token=20.0,
                tiers={KVTier.HOST: TierCost(10e9, 5.0), KVTier.SSD: TierCost(1e9, 200.0)},
            )
        )
    host = ssd = None
    if "host" in config.kv_tiers:
        host_bytes = int(config.host_cache_gib * _GIB)
        host = HostBlockPool.from_bytes(schema, host_bytes, policy=build_policy(config.kv_policy, options),
                                        evict_fraction=host_evict_fraction(schema.blocks_in(host_bytes)))
    if "ssd" in config.kv_tiers:
        ssd = SsdBlockStore(
            config.ssd_cache_dir, schema, int(config.ssd_cache_gib * _GIB), policy=build_policy(config.kv_policy, options)
        )
    return TieredKVStore(host=host, ssd=ssd)


class TieredPrefixCache(KVCacheHooks):
    """The KV hooks sagellm installs into LMDeploy (see module docstring)."""

    def __init__(self, config: KVTierConfig):
        self.config = config
        self.enabled = False
        self.stats = TierHitStats()
        self.store: TieredKVStore | None = None
        self._cache_engine = None
        self._stacked = False
        self._allocator = None
        self._schema: KVCacheSchema | None = None
        self._namespaces: dict[str, bytes] = {}
        self._model = ""
        self._kv_dtype = ""

    # -- attach -------------------------------------------------------------------------
    def attach(self, engine) -> None:
        if not self.config.offload_enabled:
            return
        reason = self._unsupported_reason(engine)
        if reason:
            logger.warning("KV tiers %s stay off: %s", ",".join(self.config.kv_tiers[1:]), reason)
            return
        self.bind(engine.executor.model_agent.cache_engine, engine.scheduler.block_manager.allocator,
                  model_identity(engine.model_path))

    def bind(self, cache_engine, allocator, model: str) -> None:
        """Use ``cache_engine.full_gpu_cache`` (K and V tensors) and the scheduler's block ``allocator``."""
        self._cache_engine = cache_engine
        self._allocator = allocator
        self._schema = cache_schema(cache_engine)
        self._model = model
        self._kv_dtype = self._schema.dtype
        self._stacked = stacked_shape(self._schema) is not None
        self.store = build_store(self.config, self._schema)
        self.enabled = True
        logger.info("KV tiers on: %s (policy %s)", ",".join(self.config.kv_tiers), self.config.kv_policy)

    @staticmethod
    def _unsupported_reason(engine) -> str | None:
        if not engine.cache_config.enable_prefix_caching:
            return "prefix caching is off (enable_prefix_caching=False)"
        if engine.cache_config.quant_policy:
            return f"quantized KV (quant_policy={engine.cache_config.quant_policy}) is not supported by the tiers yet"
        agent = getattr(engine.executor, "model_agent", None)
        if agent is None or getattr(agent, "cache_engine", None) is None:
            return f"the cache engine runs in other processes ({type(engine.executor).__name__}); tiers need the uni executor"
        if len(engine.cache_config.states_shapes) > 0:
            return "state-space models keep per-sequence state the tiers do not restore"
        return None

    def namespace(self, adapter_name: str | None) -> bytes:
        adapter = adapter_name or ""
        if adapter not in self._namespaces:
            self._namespaces[adapter] = PrefixNamespace(
                model=self._model, adapter=adapter, kv_dtype=self._kv_dtype, block_size=self._schema.block_size
            ).to_bytes()
        return self._namespaces[adapter]

    # -- chained hashes of trie nodes ------------------------------------------------------
    def _node_hash(self, trie, node: Node) -> bytes | None:
        """Chained content hash of the block ``node`` holds (None for a root)."""
        chain = []
        current = node
        while current is not None and current.parent is not None and getattr(current, _HASH_ATTR, None) is None:
            chain.append(current)
            current = current.parent
        parent_hash = None if current is None or current.parent is None else getattr(current, _HASH_ATTR)
        if chain:
            namespace = self.namespace(self._adapter_of(trie, current if current is not None else chain[-1]))
            for item in reversed(chain):
                parent_hash = block_hashes(item.tokens, self._schema.block_size, namespace, parent=parent_hash)[0]
                setattr(item, _HASH_ATTR, parent_hash)
        return getattr(node, _HASH_ATTR, None)

    @staticmethod
    def _adapter_of(trie, node: Node) -> str | None:
        root = node
        while root.parent is not None:
            root = root.parent
        for name, candidate in trie._roots.items():
            if candidate is root:
                return name
        return None

    # -- block bytes ------------------------------------------------------------------------
    def _physical(self, logical_block: int) -> int:
        return int(self._allocator.get_physical_blocks(np.array([logical_block]))[0])

    def _read_device_block(self, physical: int) -> bytes:
        keys, values = self._cache_engine.full_gpu_cache[0], self._cache_engine.full_gpu_cache[1]
        if self._stacked:
            return pack_stacked(self._schema, keys[:, physical], values[:, physical])
        tensors = []
        for layer in range(keys.shape[0]):
            tensors += [keys[layer, physical], values[layer, physical]]
        return pack_block(self._schema, tensors)

    def _write_device_block(self, physical: int, payload: bytes) -> None:
        keys, values = self._cache_engine.full_gpu_cache[0], self._cache_engine.full_gpu_cache[1]
        if self._stacked:
            unpack_stacked(self._schema, payload, keys[:, physical], values[:, physical])
        else:
            tensors = unpack_block(self._schema, payload)
            for layer in range(keys.shape[0]):
                keys[layer, physical].copy_(tensors[2 * layer])
                values[layer, physical].copy_(tensors[2 * layer + 1])
        if keys.device.type == "cuda":
            # the next forward runs on the model agent's stream: the copy must be complete first
            torch.cuda.synchronize(keys.device)

    # -- write-back on eviction ---------------------------------------------------------------
    @_timed("writeback")
    def before_trie_evict(self, trie, node: Node) -> None:
        if not self.enabled:
            return
        block_hash = self._node_hash(trie, node)
        if block_hash is None:
            return
        key = KVBlockKey(block_hash)
        if self.store.locate([key])[0] is not None:
            return
        parent_hash = getattr(node.parent, _HASH_ATTR, None) if node.parent is not None else None
        lineage = BlockLineage(
            parent_hash=parent_hash or ROOT_PARENT,
            token_bytes=token_bytes(node.tokens),
            depth=int(node.num_matched) - self._schema.block_size,
        )
        started = time.perf_counter()
        payload = self._read_device_block(self._physical(node.block))
        plan = self.store.offload([key], [payload], StoreHints(lineage=(lineage,)))
        if plan.keys:
            metrics.kv_offload(self.store.tiers[0], nbytes=len(payload), seconds=time.perf_counter() - started)
        self.stats.offloaded_blocks += len(plan.keys)

    # -- store on release ----------------------------------------------------------------------------
    @_timed("release")
    def before_sequence_free(self, scheduler, seq) -> None:
        """Keep the computed full blocks the trie did not cache (e.g. a request that ended at prefill).

        LMDeploy caches blocks only while decoding and lags by up to one scheduling interval, so
        the last blocks of a finished sequence (the answer of a chat turn, a whole prompt that
        ended at prefill) would be freed and recomputed on the next turn; they go to the first
        lower tier instead.
        """
        if not self.enabled:
            return
        trie = scheduler.block_trie
        if not trie.enable:
            return
        block_size = self._schema.block_size
        node: Node = getattr(seq.logical_blocks, "last_shared_node", None) or trie.get_root(seq.adapter_name)
        cached_tokens = int(node.num_matched)
        num_blocks = int(seq.num_history_ids) // block_size - cached_tokens // block_size
        if num_blocks <= 0:
            return
        logical_blocks = seq.logical_blocks.get_real_blocks()[cached_tokens // block_size :][:num_blocks]
        tokens = np.asarray(seq.history_cache[cached_tokens : cached_tokens + num_blocks * block_size]).copy()
        hashes = block_hashes(tokens, block_size, self.namespace(seq.adapter_name), parent=self._node_hash(trie, node))
        keys = [KVBlockKey(h) for h in hashes]
        present = self.store.locate(keys)
        parent_hash = getattr(node, _HASH_ATTR, None) or ROOT_PARENT
        new_keys, payloads, lineages = [], [], []
        started = time.perf_counter()
        for index, key in enumerate(keys):
            if present[index] is None:
                new_keys.append(key)
                payloads.append(self._read_device_block(self._physical(int(logical_blocks[index]))))
                lineages.append(BlockLineage(
                    parent_hash=parent_hash,
                    token_bytes=token_bytes(tokens[index * block_size : (index + 1) * block_size]),
                    depth=cached_tokens + index * block_size,
                ))
            parent_hash = key.block_hash
        if not new_keys:
            return
        plan = self.store.offload(new_keys, payloads, StoreHints(lineage=tuple(lineages)))
        if plan.keys:
            metrics.kv_offload(self.store.tiers[0], nbytes=sum(map(len, payloads)), seconds=time.perf_counter() - started)
        self.stats.offloaded_blocks += len(plan.keys)

    # -- restore on match --------------------------------------------------------------------------
    @_timed("restore")
    def after_prefix_match(self, scheduler, seq) -> None:
        trie = scheduler.block_trie
        if not trie.enable:
            return
        node: Node = getattr(seq.logical_blocks, "last_shared_node", None) or trie.get_root(seq.adapter_name)
        device_tokens = int(node.num_matched)
        self.stats.lookups += 1
        self.stats.hit_tokens["device"] += device_tokens
        metrics.prefix_lookup_tokens("device", int(seq.num_valid_ids))
        metrics.prefix_hit_tokens("device", device_tokens)
        if not self.enabled:
            return
        block_size = self._schema.block_size
        # like the trie, leave at least one token of the prompt to compute
        num_blocks = (seq.num_valid_ids - 1 - device_tokens) // block_size
        if num_blocks <= 0:
            return
        tokens = np.asarray(seq.history_cache[device_tokens : device_tokens + num_blocks * block_size]).copy()
        parent_hash = self._node_hash(trie, node)
        hashes = block_hashes(tokens, block_size, self.namespace(seq.adapter_name), parent=parent_hash)
        fetched = self.store.fetch([KVBlockKey(h) for h in hashes])
        self.stats.rejected_blocks += len(fetched.failed)
        restored = []
        stop = "not_stored" if len(fetched.keys) < num_blocks else None
        self._make_room(trie, len(fetched.keys))
        for index, (key, payload, tier) in enumerate(zip(fetched.keys, fetched.payloads, fetched.tiers)):
            block_tokens = tokens[index * block_size : (index + 1) * block_size]
            if not self._lineage_matches(key, tier, block_tokens):
                self.stats.rejected_blocks += 1
                stop = "lineage"
                break
            if hash(("random", tuple(block_tokens))) in node.children:
                stop = "trie_conflict"  # the trie holds other tokens under this key; never shadow its node
                break
            logical = self._allocate_device_block(trie)
            if logical is None:
                stop = "no_device_block"
                break
            # the sequence's reference right away (the trie holds the first), so that making room
            # for the next restored block cannot evict this one
            self._allocator.add_ref_count(np.array([logical]), 1)
            started = time.perf_counter()
            self._write_device_block(self._physical(logical), payload)
            metrics.kv_onload(tier, nbytes=len(payload), seconds=time.perf_counter() - started)
            metrics.prefix_hit_tokens(tier, block_size)
            node = self._link(trie, node, logical, block_tokens, key.block_hash)
            restored.append(logical)
            self.stats.hit_tokens[tier.value] += block_size
        if stop is not None:
            self.stats.restore_stops[stop] += 1
        if not restored:
            return
        blocks = np.array(restored)
        self._allocator.update_access_time(blocks)
        seq.logical_blocks.append(blocks)
        seq.logical_blocks.last_shared_node = node
        seq.set_step(int(node.num_matched))
        self.stats.restored_blocks += len(restored)

    def _lineage_matches(self, key: KVBlockKey, tier: KVTier, block_tokens: np.ndarray) -> bool:
        backend = self.store.backend(tier)
        lineage = backend.lineage(key)
        return lineage is not None and lineage.token_bytes == token_bytes(block_tokens)

    def _make_room(self, trie, num_blocks: int) -> None:
        """Evict trie leaves for ``num_blocks`` device blocks in one pass (one heap of leaves, not one per block)."""
        free = min(self._allocator.get_num_free_blocks(), self._allocator.get_phy_allocator("gpu").get_num_free_blocks())
        if num_blocks > free:
            trie.evict(num_blocks - free)

    def _allocate_device_block(self, trie) -> int | None:
        if self._allocator.get_num_free_blocks() < 1 or self._allocator.get_phy_allocator("gpu").get_num_free_blocks() < 1:
            trie.evict(1)
        try:
            return int(self._allocator.allocate(1, "gpu")[0])
        except MemoryError:
            return None

    @staticmethod
    def _link(trie, parent: Node, logical: int, block_tokens: np.ndarray, block_hash: bytes) -> Node:
        """Add a restored block under ``parent`` exactly as ``BlockTrie.allocate`` would have."""
        if parent.parent is not None and len(parent.children) == 0:
            trie.leaves.discard(parent)
        node = Node(
            hash_key=hash(("random", tuple(block_tokens))),
            block=logical,
            tokens=block_tokens,
            num_matched=int(parent.num_matched) + len(block_tokens),
        )
        node.parent = parent
        setattr(node, _HASH_ATTR, block_hash)
        trie.leaves.add(node)
        return node

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def install_kv_tiers() -> None:
    """Plugin entry: read the tier config (``SAGELLM_KV_TIERS`` etc.) and install the hooks once."""
    if find_kv_hooks(TieredPrefixCache) is not None:
        return
    add_kv_hooks(TieredPrefixCache(load_config(KVTierConfig)))


def tier_stats_json() -> str:
    hooks = find_kv_hooks(TieredPrefixCache)
    return json.dumps(hooks.stats.as_dict() if hooks is not None else {})
