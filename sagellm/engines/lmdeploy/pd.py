"""Prefill/decode (PD) disaggregation through the KV seams of patches 0002/0003.

A ``prefill`` engine and a ``decode`` engine are separate processes (``sage llm engine start
--role prefill|decode``); ``sagellm.control_plane.pd_router`` sends each request first to a
prefill engine with ``max_tokens=1`` and then, unchanged, to a decode engine.

- Prefill engine, ``after_prefix_match``: announces the chained hashes of the prompt's full
  blocks to its transfer buffer (a decode engine asking for them waits instead of missing).
  ``before_sequence_free``: copies the KV of the sequence's computed full blocks from the
  device cache into the buffer (shared memory), keyed by chained content hash, with the
  block's token ids and per-chunk checksums; the blocks are then freed as usual. A
  ``TransportServer`` serves the buffer on ``pd_listen``.
- Decode engine, ``after_prefix_match`` (after the local trie and the host/SSD tiers had their
  turn): asks the prefill engines in ``pd_peers`` for the next missing full blocks of the
  prompt, checks each block's token ids, reads them through the ``TransportEngine`` (backend
  from ``--kv-transport``, default shm) into freshly allocated device blocks, links them into
  LMDeploy's prefix trie exactly as ``kv_tiers`` links restored blocks, and moves the
  sequence's computed-prefix boundary. Only the tail (less than one block, at least one
  token) is prefilled here. Any failure -- peer gone, timeout, checksum still wrong after the
  re-sends, token mismatch -- leaves the sequence as it was: it is recomputed.

Keys are the same chained hashes ``kv_tiers`` gives trie nodes (same namespace: model
identity, adapter, KV dtype, block size), so both plugins agree on every block. Like the tiers
it needs the cache engine in the scheduler's process (LMDeploy's ``uni`` executor).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from lmdeploy.pytorch.paging.block_trie import Node
from lmdeploy.pytorch.paging.hooks import KVCacheHooks

from sagellm.comm_backend import KVTransportConfig, TransferBuffer, TransferError, TransportEngine, TransportServer
from sagellm.comm_backend.pd_config import PDConfig
from sagellm.comm_backend.transport_config import from_environment
from sagellm.core.config import load_config
from sagellm.core.kv import KVCacheSchema
from sagellm.engines.lmdeploy.kv_hook_chain import add_kv_hooks, find_kv_hooks
from sagellm.engines.lmdeploy.kv_tiers import TieredPrefixCache, cache_schema, model_identity
from sagellm.kv_runtime.layout import block_layout
from sagellm.prefix_reuse import block_hashes, token_bytes
from sagellm.telemetry import metrics

logger = logging.getLogger("sagellm.pd")

_GIB = 1 << 30
#: after a peer failed (unreachable, refused, foreign), skip it this long before trying again
PEER_BACKOFF_S = 5.0


class PDStats:
    """What the PD hooks did in this engine process."""

    def __init__(self) -> None:
        self.exported_blocks = 0
        self.pulled_blocks = 0
        self.pull_failures = 0
        self.token_mismatches = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


class PDKVHooks(KVCacheHooks):
    """The ``pd`` plugin's KV hooks (see the module docstring)."""

    # the chained-hash and trie-linking helpers of the KV tiers: one definition of block identity
    namespace = TieredPrefixCache.namespace
    _node_hash = TieredPrefixCache._node_hash
    _adapter_of = staticmethod(TieredPrefixCache._adapter_of)
    _physical = TieredPrefixCache._physical
    _allocate_device_block = TieredPrefixCache._allocate_device_block
    _link = staticmethod(TieredPrefixCache._link)

    def __init__(self, config: PDConfig, transport: KVTransportConfig | None = None) -> None:
        self.config = config
        self.transport = transport or KVTransportConfig()
        self.enabled = False
        self.stats = PDStats()
        self.buffer: TransferBuffer | None = None
        self.server: TransportServer | None = None
        self.engine: TransportEngine | None = None
        self._links: dict = {}
        self._down_until: dict[str, float] = {}
        self._expected: dict[int, list[bytes]] = {}
        self._staging: torch.Tensor | None = None
        self._namespaces: dict[str, bytes] = {}
        self._schema: KVCacheSchema | None = None

    @property
    def role(self) -> str:
        return self.config.role

    # -- attach -------------------------------------------------------------------------------
    def attach(self, engine) -> None:
        if self.role == "both":
            return
        reason = TieredPrefixCache._unsupported_reason(engine)
        if reason:
            logger.error("PD %s role stays off: %s", self.role, reason)
            return
        self.bind(engine.executor.model_agent.cache_engine, engine.scheduler.block_manager.allocator,
                  model_identity(engine.model_path))

    def bind(self, cache_engine, allocator, model: str) -> None:
        """Use ``cache_engine``'s K/V tensors and the scheduler's block ``allocator``."""
        self._cache_engine = cache_engine
        self._allocator = allocator
        self._schema = cache_schema(cache_engine)
        self._model = model
        self._kv_dtype = self._schema.dtype
        self._block_bytes = self._schema.bytes_per_block()
        self._layout = block_layout(self._schema)
        if self.role == "prefill":
            slots = max(1, int(self.config.pd_buffer_gib * _GIB) // self._block_bytes)
            self.buffer = TransferBuffer(self._block_bytes, slots, chunk_bytes=self.transport.chunk_bytes, shared=True)
            host, _, port = self.config.pd_listen.rpartition(":")
            self.server = TransportServer(self.buffer, host=host.strip("[]"), port=int(port), info=self._identity()).start()
            print(f"[sagellm] PD prefill: KV transfer server at {self.server.address} "
                  f"({slots} blocks of {self._block_bytes} bytes in shared memory)", flush=True)
        else:
            self.engine = TransportEngine(self.transport, io_timeout_s=10.0)
            print(f"[sagellm] PD decode: pulling KV from {', '.join(self.config.pd_peers)} over {self.transport.backend}", flush=True)
        self.enabled = True

    def _identity(self) -> dict:
        return {"schema": self._schema.to_dict(), "namespace": self.namespace(None).hex()}

    # -- prefill side ------------------------------------------------------------------------------
    def _prompt_keys(self, seq, num_tokens: int) -> tuple[np.ndarray, list[bytes]]:
        block_size = self._schema.block_size
        tokens = np.asarray(seq.history_cache[: (num_tokens // block_size) * block_size]).copy()
        return tokens, block_hashes(tokens, block_size, self.namespace(seq.adapter_name))

    def _write_slot(self, physical: int):
        keys, values = self._cache_engine.full_gpu_cache[0], self._cache_engine.full_gpu_cache[1]

        def write(view: memoryview) -> None:
            flat = torch.frombuffer(view, dtype=torch.uint8)
            for spec in self._layout:
                source = (keys if spec.name == "k" else values)[spec.layer, physical]
                flat[spec.offset : spec.offset + spec.nbytes].view(spec.dtype).view(spec.shape).copy_(source)

        return write

    def _export(self, seq) -> None:
        block_size = self._schema.block_size
        tokens, keys = self._prompt_keys(seq, int(seq.num_history_ids))
        if not keys:
            return
        logical = seq.logical_blocks.get_real_blocks()[: len(keys)]
        physical = self._allocator.get_physical_blocks(np.asarray(logical))
        started = time.perf_counter()
        stored = 0
        for index, key in enumerate(keys):
            meta = token_bytes(tokens[index * block_size : (index + 1) * block_size])
            if self.buffer.put(key, meta, self._write_slot(int(physical[index])), nbytes=self._block_bytes) is None:
                logger.warning("PD transfer buffer full (every slot pinned); %d block(s) not exported", len(keys) - index)
                break
            stored += 1
        if stored:
            metrics.kv_offload("remote", nbytes=stored * self._block_bytes, seconds=time.perf_counter() - started)
        self.stats.exported_blocks += stored

    # -- hooks --------------------------------------------------------------------------------------
    def after_prefix_match(self, scheduler, seq) -> None:
        if not self.enabled or not scheduler.block_trie.enable:
            return
        if self.role == "prefill":
            if seq.seq_id not in self._expected:
                _, keys = self._prompt_keys(seq, int(seq.num_valid_ids))
                self._expected[seq.seq_id] = keys
                self.buffer.expect(keys)
            return
        self._pull(scheduler, seq)

    def before_sequence_free(self, scheduler, seq) -> None:
        if not self.enabled or self.role != "prefill":
            return
        keys = self._expected.pop(seq.seq_id, [])
        try:
            self._export(seq)
        finally:
            self.buffer.forget_expected(keys)

    # -- decode side ----------------------------------------------------------------------------------
    def _link_to(self, peer: str):
        link = self._links.get(peer)
        if link is not None and not link.closed:
            return link
        link = self.engine.connect(peer)
        identity = self._identity()
        if link.info != identity:
            link.close()
            raise TransferError(f"PD peer {peer} serves another model or KV layout ({link.info.get('schema')}); "
                                f"this engine has {identity['schema']}")
        self._links[peer] = link
        return link

    def _lookup(self, keys: list[bytes]):
        for peer in self.config.pd_peers:
            if time.monotonic() < self._down_until.get(peer, 0.0):
                continue
            try:
                link = self._link_to(peer)
                objects = link.lookup(keys, wait_s=self.config.pd_wait_s)
            except TransferError as exc:
                logger.warning("PD peer %s: %s (skipped for %.0f s)", peer, exc, PEER_BACKOFF_S)
                self._links.pop(peer, None)
                self._down_until[peer] = time.monotonic() + PEER_BACKOFF_S
                continue
            if objects:
                return link, objects
        return None, []

    def _staging_views(self, count: int) -> list[memoryview]:
        needed = count * self._block_bytes
        if self._staging is None or self._staging.numel() < needed:
            self._staging = torch.empty(needed, dtype=torch.uint8)
        view = memoryview(self._staging.numpy())
        return [view[i * self._block_bytes : (i + 1) * self._block_bytes] for i in range(count)]

    def _write_device_block(self, physical: int, index: int) -> None:
        keys, values = self._cache_engine.full_gpu_cache[0], self._cache_engine.full_gpu_cache[1]
        flat = self._staging[index * self._block_bytes : (index + 1) * self._block_bytes]
        for spec in self._layout:
            target = (keys if spec.name == "k" else values)[spec.layer, physical]
            target.copy_(flat[spec.offset : spec.offset + spec.nbytes].view(spec.dtype).view(spec.shape))
        if keys.device.type == "cuda":
            torch.cuda.synchronize(keys.device)

    def _pull(self, scheduler, seq) -> None:
        trie = scheduler.block_trie
        block_size = self._schema.block_size
        node: Node = getattr(seq.logical_blocks, "last_shared_node", None) or trie.get_root(seq.adapter_name)
        cached = int(node.num_matched)
        num_blocks = (int(seq.num_valid_ids) - 1 - cached) // block_size  # leave >= 1 token to compute
        if num_blocks <= 0:
            return
        tokens = np.asarray(seq.history_cache[cached : cached + num_blocks * block_size]).copy()
        keys = block_hashes(tokens, block_size, self.namespace(seq.adapter_name), parent=self._node_hash(trie, node))
        metrics.prefix_lookup_tokens("remote", num_blocks * block_size)
        link, objects = self._lookup(keys)
        if not objects:
            return
        try:
            usable = 0
            for index, obj in enumerate(objects):
                block_tokens = tokens[index * block_size : (index + 1) * block_size]
                if obj.meta != token_bytes(block_tokens) or obj.nbytes != self._block_bytes:
                    self.stats.token_mismatches += 1
                    break
                usable += 1
            if usable and hash(("random", tuple(tokens[:block_size]))) in node.children:
                usable = 0  # the trie holds other tokens under this key; never shadow its node
            allocated = []
            for _ in range(usable):
                logical = self._allocate_device_block(trie)
                if logical is None:
                    break
                self._allocator.add_ref_count(np.array([logical]), 1)
                allocated.append(logical)
            if not allocated:
                return
            started = time.perf_counter()
            try:
                link.read(objects[: len(allocated)], self._staging_views(len(allocated)))
            except TransferError as exc:  # ChecksumMismatch included: recompute instead
                self.stats.pull_failures += 1
                logger.warning("PD pull of %d block(s) from %s failed, recomputing: %s", len(allocated), link.address, exc)
                blocks = np.array(allocated)
                self._allocator.add_ref_count(blocks, -1)
                self._allocator.free(blocks)
                return
            for index, logical in enumerate(allocated):
                self._write_device_block(self._physical(logical), index)
                node = self._link(trie, node, logical, tokens[index * block_size : (index + 1) * block_size], keys[index])
        finally:
            if not link.closed:
                try:
                    link.release([obj.key for obj in objects])
                except TransferError:
                    pass
        blocks = np.array(allocated)
        self._allocator.update_access_time(blocks)
        seq.logical_blocks.append(blocks)
        seq.logical_blocks.last_shared_node = node
        seq.set_step(int(node.num_matched))
        nbytes = len(allocated) * self._block_bytes
        metrics.kv_onload("remote", nbytes=nbytes, seconds=time.perf_counter() - started)
        metrics.prefix_hit_tokens("remote", len(allocated) * block_size)
        self.stats.pulled_blocks += len(allocated)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self.server is not None:
            self.server.close()
        if self.buffer is not None:
            self.buffer.close()


def install_pd() -> None:
    """Plugin entry: read the role (``SAGELLM_ROLE`` etc.) and install the hooks once (inert for ``both``)."""
    if find_kv_hooks(PDKVHooks) is not None:
        return
    config = load_config(PDConfig)
    if config.role == "both":
        return
    add_kv_hooks(PDKVHooks(config, from_environment()))
