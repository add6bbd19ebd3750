"""``SsdBlockStore``: KV blocks as checksummed files in one directory, bounded in bytes.

One file per block, named by the block hash (plus a short namespace tag when the key has
a namespace)::

    <dir>/<hash hex>[.<ns tag>].kvb
    ┌─────────────────────────── header ───────────────────────────┐┌── payload ──┐
    magic "SGKV" | version u16 | header_len u32 | schema fingerprint 8B |
    payload_len u64 | payload crc32 u32 | depth u32 | hash_len u8 | ns_len u16 |
    parent_len u8 | tokens_len u32 |
    hash | namespace utf-8 | parent hash | token ids (int32 LE) | header crc32 u32   block bytes

Parent hash and token ids (``StoreHints.lineage``, optional) let a restarted radix index
adopt the block only after comparing tokens, exactly like a normal hit (``probe``).

Guarantees:

- **Atomic writes.** A block is written to ``.tmp-*`` in the same directory, fsynced and
  renamed over its final name, so a crash never leaves a half block under a block name.
  Opening a store deletes leftover ``.tmp-*`` files.
- **Survives restarts.** Opening scans the directory and rebuilds the index from headers;
  files of another schema (fingerprint) are ignored, malformed or truncated ones deleted.
- **Never serves bad bytes.** ``read`` verifies header, key, length and crc32; a corrupt,
  truncated or missing file fails the read, the block leaves the index (a removal event is
  emitted) and the caller recomputes it.
- **Fails soft.** Any ``OSError`` while writing (``ENOSPC``, ``EACCES``, ``EROFS``, ``EIO``) or an
  unwritable directory at open *disables* the tier with a logged warning: later stores are
  refused (``plan.skipped``) without raising; blocks already on disk can still be read.
- **Asynchronous writes.** ``write`` copies the payloads and queues them to a small thread
  pool, so offload overlaps with compute; a block's file is published when durable (a
  ``TierEvent``). Until then the block is served from the queued copy: a write-back demoted
  from the host tier is looked up again within milliseconds (multi-turn chat, 4 of 96
  requests lost 192-448 prefix tokens each to that window before). At most
  ``max_pending_writes`` blocks are in flight; beyond that ``prepare_store`` refuses keys.
  ``flush(timeout)`` waits for the queue to drain.

Store: ``prepare_store`` (reserve bytes, evict with the policy) -> ``write(plan, payloads)`` ->
``complete_store(plan)``. Load: ``prepare_load`` (pin) -> ``read(plan)`` -> ``complete_load``.
One process should own a directory at a time.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

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
from sagellm.kv_runtime._published import PublishedBlocks
from sagellm.kv_runtime.layout import Payload, as_byte_tensor, pack_block, schema_fingerprint
from sagellm.kv_runtime.types import LoadedBlocks, LoadReport, StoreHints, TierEvent
from sagellm.prefix_reuse import BlockLineage

logger = logging.getLogger(__name__)

MAGIC = b"SGKV"
FORMAT_VERSION = 1
SUFFIX = ".kvb"
TMP_PREFIX = ".tmp-"
_FIXED = struct.Struct("<4sHI8sQIIBHBI")
_MAX_HEADER = 1 << 24
_CRC = struct.Struct("<I")
_MAX_DEPTH = 2**32 - 1


class BlockFileError(Exception):
    """A block file failed verification (the message says why)."""


def namespace_tag(namespace: str) -> str:
    return hashlib.blake2b(namespace.encode("utf-8"), digest_size=4).hexdigest()


def block_file_name(key: KVBlockKey) -> str:
    """File name of ``key``: hash hex, a namespace tag when the key has one, ``.kvb``."""
    tag = f".{namespace_tag(key.namespace)}" if key.namespace else ""
    return f"{key.block_hash.hex()}{tag}{SUFFIX}"


def encode_header(
    key: KVBlockKey, fingerprint: bytes, payload_len: int, payload_crc: int, depth: int,
    lineage: BlockLineage | None = None,
) -> bytes:
    ns = key.namespace.encode("utf-8")
    parent = lineage.parent_hash if lineage is not None else b""
    tokens = lineage.token_bytes if lineage is not None else b""
    header_len = header_size(key, lineage)
    body = _FIXED.pack(
        MAGIC, FORMAT_VERSION, header_len, fingerprint, payload_len, payload_crc, min(depth, _MAX_DEPTH),
        len(key.block_hash), len(ns), len(parent), len(tokens),
    ) + key.block_hash + ns + parent + tokens
    return body + _CRC.pack(zlib.crc32(body))


def header_size(key: KVBlockKey, lineage: BlockLineage | None) -> int:
    extra = 0 if lineage is None else len(lineage.parent_hash) + len(lineage.token_bytes)
    return _FIXED.size + len(key.block_hash) + len(key.namespace.encode("utf-8")) + extra + _CRC.size


@dataclass(frozen=True)
class BlockHeader:
    key: KVBlockKey
    fingerprint: bytes
    header_len: int
    payload_len: int
    payload_crc: int
    depth: int
    lineage: BlockLineage | None


def decode_header(data: bytes) -> BlockHeader:
    """Parse a header from the first bytes of a block file.

    Raises:
        BlockFileError: too short, bad magic/version/crc, or inconsistent lengths.
    """
    if len(data) < _FIXED.size:
        raise BlockFileError("truncated header")
    (magic, version, header_len, fp, payload_len, crc, depth, hash_len, ns_len, parent_len,
     tokens_len) = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise BlockFileError("bad magic")
    if version != FORMAT_VERSION:
        raise BlockFileError(f"unknown format version {version}")
    if header_len != _FIXED.size + hash_len + ns_len + parent_len + tokens_len + _CRC.size or hash_len == 0:
        raise BlockFileError("inconsistent header length")
    if len(data) < header_len:
        raise BlockFileError("truncated header")
    body = data[: header_len - _CRC.size]
    (stored,) = _CRC.unpack_from(data, header_len - _CRC.size)
    if zlib.crc32(body) != stored:
        raise BlockFileError("header checksum mismatch")
    pos = _FIXED.size
    fields = []
    for n in (hash_len, ns_len, parent_len, tokens_len):
        fields.append(bytes(body[pos : pos + n]))
        pos += n
    block_hash, ns, parent, tokens = fields
    try:
        key = KVBlockKey(block_hash, ns.decode("utf-8"))
        lineage = BlockLineage(parent, tokens, depth) if parent or tokens else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BlockFileError(f"bad key or lineage in header: {exc}") from None
    return BlockHeader(key, fp, header_len, payload_len, crc, depth, lineage)


def read_header(fh) -> BlockHeader:
    """Read and parse the header at the start of an open block file (reads only the header)."""
    head = fh.read(_FIXED.size)
    if len(head) < _FIXED.size:
        raise BlockFileError("truncated header")
    (header_len,) = struct.unpack_from("<I", head, 6)
    if header_len > _MAX_HEADER:
        raise BlockFileError("implausible header length")
    if header_len > len(head):
        head += fh.read(header_len - len(head))
    return decode_header(head)


class _Status(Enum):
    RESERVED = "reserved"
    WRITING = "writing"
    PUBLISHED = "published"


@dataclass(eq=False)
class _Entry:
    key: KVBlockKey
    path: str
    size: int
    status: _Status
    depth: int
    last_access: float
    lineage: BlockLineage | None = None
    ticket: int | None = None
    hit_count: int = 0
    pins: int = 0
    cancelled: bool = False
    queued_payload: bytes | None = None  # the bytes being written, served until the file is published

    @property
    def readable(self) -> bool:
        return self.status is _Status.PUBLISHED or self.queued_payload is not None


@dataclass
class _Ticket:
    direction: TransferDirection
    entries: tuple[_Entry, ...]
    failed: list[KVBlockKey]
    read_ok: int | None = None


@dataclass(frozen=True)
class SsdStats:
    """State of an SSD store beyond ``TierStats``.

    Attributes:
        directory: the cache directory.
        enabled: False once a write failure or an unwritable directory disabled the tier.
        disabled_reason: why, when disabled.
        capacity_bytes / used_bytes: the bound and the bytes held or reserved (headers included).
        num_blocks: published blocks.
        pending_writes: blocks queued or being written.
        corrupt_blocks: blocks dropped because verification failed (on open or on read).
        failed_writes: writes that raised.
        ignored_files: block files of another schema left alone at open.
        removed_temp_files: stale ``.tmp-*`` files deleted at open.
    """

    directory: str
    enabled: bool
    disabled_reason: str | None
    capacity_bytes: int
    used_bytes: int
    num_blocks: int
    pending_writes: int
    corrupt_blocks: int
    failed_writes: int
    ignored_files: int
    removed_temp_files: int


class SsdBlockStore(PublishedBlocks):
    """SSD KV tier implementing ``KVBackendProtocol`` (see the module docstring).

    Args:
        directory: cache directory (created if missing).
        schema: KV geometry; fixes the payload size and the fingerprint.
        capacity_bytes: bound on the bytes of block files (headers included).
        policy: victim choice when full (default ``LRUPolicy()``); victims are deleted.
        writer_threads: background writer threads.
        max_pending_writes: blocks that may be queued or in flight.
        fsync: fsync each file and the directory (turn off only for throwaway caches).
        evict_fraction: when a store finds the directory full, free at least this fraction of
            ``capacity_bytes`` in one policy call (low watermark). 0 = exactly what is needed.
        clock: wall-clock time source (file mtimes seed access times on open).
    """

    name = "ssd"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        schema: KVCacheSchema,
        capacity_bytes: int,
        *,
        policy: EvictionPolicy | None = None,
        writer_threads: int = 2,
        max_pending_writes: int = 256,
        fsync: bool = True,
        evict_fraction: float = 0.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        owner = type(self).__name__
        check_float(owner, "evict_fraction", evict_fraction, minimum=0.0)
        if evict_fraction > 1:
            raise invalid(owner, "evict_fraction", evict_fraction, "a number in [0, 1]")
        if not isinstance(schema, KVCacheSchema):
            raise invalid(owner, "schema", schema, "a KVCacheSchema")
        check_int(owner, "capacity_bytes", capacity_bytes, minimum=0)
        check_int(owner, "writer_threads", writer_threads, minimum=1)
        check_int(owner, "max_pending_writes", max_pending_writes, minimum=1)
        if policy is not None and not isinstance(policy, EvictionPolicy):
            raise invalid(owner, "policy", policy, "an EvictionPolicy or None")
        self.directory = Path(directory)
        self.schema = schema
        self.capacity_bytes = capacity_bytes
        self.policy = policy if policy is not None else LRUPolicy()
        self.max_pending_writes = max_pending_writes
        self.fsync = fsync
        self.evict_batch_bytes = int(capacity_bytes * evict_fraction)
        self.fingerprint = schema_fingerprint(schema)
        self.payload_bytes = schema.bytes_per_block()
        self._clock = clock
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._entries: dict[KVBlockKey, _Entry] = {}
        self._tickets: dict[int, _Ticket] = {}
        self._ticket_ids = itertools.count(1)
        self._events: deque[TierEvent] = deque()
        self._used_bytes = 0
        self._pending = 0
        self.enabled = True
        self.disabled_reason: str | None = None
        self._hits = self._misses = self._stored = self._loaded = self._evicted = 0
        self._bytes_written = self._bytes_read = 0
        self._corrupt = self._failed_writes = self._ignored = self._removed_tmp = 0
        self._executor = ThreadPoolExecutor(max_workers=writer_threads, thread_name_prefix="sagellm-ssd-writer")
        self._open()

    # ------------------------------------------------------------- open / scan

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._disable(f"cannot create {self.directory}: {exc}")
            return
        self._scan()
        self._probe_writable()
        with self._lock:
            if self._used_bytes > self.capacity_bytes:
                self._evict_bytes(self._used_bytes - self.capacity_bytes, protect=set())

    def _probe_writable(self) -> None:
        if not os.access(self.directory, os.W_OK | os.X_OK):
            self._disable(f"directory {self.directory} is not writable")
            return
        probe = self.directory / f"{TMP_PREFIX}probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, b"\0")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            _unlink_quiet(probe)
            self._disable(f"directory {self.directory} is not writable: {exc}")

    def _scan(self) -> None:
        try:
            listing = list(os.scandir(self.directory))
        except OSError as exc:
            self._disable(f"cannot list {self.directory}: {exc}")
            return
        for item in listing:
            name = item.name
            if name.startswith(TMP_PREFIX):
                if _unlink_quiet(item.path):
                    self._removed_tmp += 1
                continue
            if not name.endswith(SUFFIX) or not item.is_file(follow_symlinks=False):
                continue
            try:
                st = item.stat(follow_symlinks=False)
                with open(item.path, "rb") as fh:
                    header = read_header(fh)
                if header.fingerprint != self.fingerprint:
                    self._ignored += 1
                    continue
                if block_file_name(header.key) != name:
                    raise BlockFileError("file name does not match its header")
                if header.payload_len != self.payload_bytes:
                    raise BlockFileError("payload length differs from the schema")
                if st.st_size != header.header_len + header.payload_len:
                    raise BlockFileError(f"size {st.st_size}, expected {header.header_len + header.payload_len}")
            except (OSError, BlockFileError) as exc:
                logger.warning("SSD KV cache: dropping unreadable block file %s: %s", item.path, exc)
                self._corrupt += 1
                _unlink_quiet(item.path)
                continue
            if header.key in self._entries:
                continue
            self._entries[header.key] = _Entry(
                header.key, item.path, st.st_size, _Status.PUBLISHED, header.depth, st.st_mtime, header.lineage
            )
            self._used_bytes += st.st_size

    # ------------------------------------------------------------- state helpers

    def _disable(self, reason: str) -> None:
        with self._lock:
            if not self.enabled:
                return
            self.enabled = False
            self.disabled_reason = reason
        logger.warning("SSD KV tier disabled: %s; stores are refused from now on, serving continues", reason)

    def _file_size(self, key: KVBlockKey, lineage: BlockLineage | None = None) -> int:
        return header_size(key, lineage) + self.payload_bytes

    @property
    def _min_file_size(self) -> int:
        return _FIXED.size + 1 + _CRC.size + self.payload_bytes

    def _drop(self, entry: _Entry, *, delete: bool) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            self._used_bytes -= entry.size
        if delete:
            _unlink_quiet(entry.path)
        if entry.status is _Status.PUBLISHED:
            self._events.append(TierEvent(entry.key, KVTier.SSD, False))

    def _evict_bytes(self, deficit: int, protect: set[KVBlockKey]) -> list[KVBlockKey]:
        evicted: list[KVBlockKey] = []
        while deficit > 0:
            by_hash: dict[bytes, _Entry] = {}
            for e in self._entries.values():
                if e.status is _Status.PUBLISHED and not e.pins and e.key not in protect:
                    by_hash.setdefault(e.key.block_hash, e)
            if not by_hash:
                break
            cands = tuple(
                BlockCandidate.trusted(
                    block_hash=h, tier=KVTier.SSD, depth=e.depth, num_tokens=self.schema.block_size,
                    last_access=e.last_access, hit_count=e.hit_count, size_bytes=e.size,
                )
                for h, e in by_hash.items()
            )
            need = -(-deficit // self._min_file_size)
            decision = self.policy.select_victims(EvictionQuery(KVTier.SSD, cands, need, self._clock()))
            if not decision.actions:
                break
            for action in decision.actions:  # eviction order; stop once the bytes are free
                if deficit <= 0:
                    break
                entry = by_hash[action.block_hash]
                self._drop(entry, delete=True)
                self._evicted += 1
                deficit -= entry.size
                evicted.append(entry.key)
        return evicted

    # ------------------------------------------------------------- store

    def prepare_store(self, spec: StoreSpec, hints: StoreHints | None = None) -> KVTransferPlan:
        """Reserve room for the keys not held yet, evicting with the policy if needed.

        Returns:
            A STORE plan whose ``locations`` are the final file paths. ``skipped``: keys already
            held, keys beyond the pending-write bound or the capacity, and every key while the
            tier is disabled.
        """
        hints = hints if hints is not None else StoreHints()
        hints.check(len(spec.keys))
        with self._lock:
            ticket = next(self._ticket_ids)
            chosen: list[int] = []
            evicted: list[KVBlockKey] = []
            if self.enabled:
                new = [i for i, k in enumerate(spec.keys) if k not in self._entries]
                room = self.max_pending_writes - self._pending - self._reserved_count()
                new = new[: max(0, room)]
                need = sum(self._file_size(spec.keys[i], hints.lineage_of(i)) for i in new)
                deficit = self._used_bytes + need - self.capacity_bytes
                if deficit > 0:
                    evicted = self._evict_bytes(max(deficit, self.evict_batch_bytes), protect=set(spec.keys))
                free = self.capacity_bytes - self._used_bytes
                for i in new:
                    size = self._file_size(spec.keys[i], hints.lineage_of(i))
                    if size > free:
                        break
                    free -= size
                    chosen.append(i)
            now = self._clock()
            entries = []
            for i in chosen:
                key = spec.keys[i]
                lineage = hints.lineage_of(i)
                entry = _Entry(
                    key, str(self.directory / block_file_name(key)), self._file_size(key, lineage), _Status.RESERVED,
                    hints.depth(i), now, lineage, ticket=ticket,
                )
                self._entries[key] = entry
                self._used_bytes += entry.size
                entries.append(entry)
            self._tickets[ticket] = _Ticket(TransferDirection.STORE, tuple(entries), [])
            taken = {e.key for e in entries}
            return KVTransferPlan(
                ticket=ticket, direction=TransferDirection.STORE, tier=spec.tier,
                keys=tuple(e.key for e in entries), block_ids=tuple(spec.block_ids[i] for i in chosen),
                locations=tuple(e.path for e in entries), skipped=tuple(k for k in spec.keys if k not in taken),
                evicted=tuple(evicted),
            )

    def _reserved_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.status is _Status.RESERVED)

    def _ticket(self, plan: KVTransferPlan, direction: TransferDirection) -> _Ticket:
        ticket = self._tickets.get(plan.ticket)
        if ticket is None or ticket.direction is not direction:
            raise invalid(type(self).__name__, "plan.ticket", plan.ticket, f"an open {direction} ticket of this store")
        return ticket

    def write(self, plan: KVTransferPlan, payloads: Sequence[Payload | Sequence[torch.Tensor]]) -> None:
        """Queue the plan's payloads for background writing (copied before returning).

        Args:
            plan: an open STORE plan of this store.
            payloads: one per ``plan.keys``: payload bytes, a flat uint8 tensor, or the block's tensors.

        Raises:
            ValueError: unknown plan, wrong number or size of payloads, or keys already written.
        """
        if len(payloads) != plan.num_blocks:
            raise invalid(type(self).__name__, "payloads", f"{len(payloads)} payloads", f"{plan.num_blocks} (one per key)")
        blobs = []
        for p in payloads:
            if isinstance(p, (list, tuple)):
                p = pack_block(self.schema, p)
            blobs.append(as_byte_tensor(p, self.payload_bytes).numpy().tobytes())
        with self._lock:
            ticket = self._ticket(plan, TransferDirection.STORE)
            for entry in ticket.entries:
                if entry.status is not _Status.RESERVED and self._entries.get(entry.key) is entry:
                    raise invalid(type(self).__name__, "plan", str(entry.key), "keys not written yet")
            jobs = []
            for entry, blob in zip(ticket.entries, blobs):
                if self._entries.get(entry.key) is not entry:
                    continue  # released meanwhile (tier disabled)
                if not self.enabled:
                    self._drop(entry, delete=False)
                    continue
                entry.status = _Status.WRITING
                entry.queued_payload = blob
                self._pending += 1
                jobs.append((entry, blob))
        for entry, blob in jobs:
            self._executor.submit(self._write_job, entry, blob)

    def _write_job(self, entry: _Entry, payload: bytes) -> None:
        published = False
        try:
            header = encode_header(entry.key, self.fingerprint, len(payload), zlib.crc32(payload), entry.depth, entry.lineage)
            data = header + payload
            self._write_file(entry.path, data)
            with self._lock:
                if entry.cancelled or self._entries.get(entry.key) is not entry:
                    _unlink_quiet(entry.path)
                else:
                    entry.status = _Status.PUBLISHED
                    entry.queued_payload = None
                    entry.ticket = None
                    entry.last_access = self._clock()
                    self._stored += 1
                    self._bytes_written += len(payload)
                    self._events.append(TierEvent(entry.key, KVTier.SSD, True, entry.path))
                    published = True
        except OSError as exc:
            with self._lock:
                self._failed_writes += 1
            self._disable(f"write of {entry.path} failed: {exc.strerror or exc} (errno {errno.errorcode.get(exc.errno, exc.errno)})")
        except Exception:
            with self._lock:
                self._failed_writes += 1
            logger.exception("SSD KV cache: write of %s failed", entry.path)
        finally:
            with self._lock:
                entry.queued_payload = None
                if not published and self._entries.get(entry.key) is entry:
                    self._drop(entry, delete=False)
                self._pending -= 1
                self._idle.notify_all()

    def _write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename."""
        tmp = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except Exception:
            _unlink_quiet(tmp)
            raise
        if self.fsync:
            _fsync_dir(os.path.dirname(path))

    def complete_store(self, plan: KVTransferPlan, success: bool = True) -> None:
        """Close a store. ``success``: written keys publish as their files land. Otherwise the
        reservations are released and in-flight writes discarded.

        Raises:
            ValueError: ``success`` but some key was never passed to ``write`` (nothing is closed).
        """
        with self._lock:
            ticket = self._ticket(plan, TransferDirection.STORE)
            live = [e for e in ticket.entries if self._entries.get(e.key) is e]
            if success:
                unwritten = [str(e.key) for e in live if e.status is _Status.RESERVED]
                if unwritten and self.enabled:
                    raise invalid(type(self).__name__, "plan", unwritten, "keys passed to write() before complete_store")
            del self._tickets[plan.ticket]
            for entry in live:
                if entry.status is _Status.RESERVED:
                    self._drop(entry, delete=False)
                elif entry.status is _Status.WRITING and not success:
                    entry.cancelled = True
                    entry.queued_payload = None  # a cancelled store is never served

    def put(
        self, keys: Sequence[KVBlockKey], payloads: Sequence[Payload], hints: StoreHints | None = None
    ) -> KVTransferPlan:
        """prepare_store + write + complete_store; returns the plan (keys being written, skipped)."""
        if len(keys) != len(payloads):
            raise invalid(type(self).__name__, "payloads", f"{len(payloads)} payloads", f"one per key ({len(keys)})")
        by_key = dict(zip(keys, payloads))
        plan = self.prepare_store(StoreSpec(tuple(keys), (0,) * len(keys), KVTier.SSD), hints)
        try:
            self.write(plan, [by_key[k] for k in plan.keys])
        except BaseException:
            self.complete_store(plan, success=False)
            raise
        self.complete_store(plan, success=True)
        return plan

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until no write is queued or in flight; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    # ------------------------------------------------------------- load

    def prepare_load(self, spec: LoadSpec) -> KVTransferPlan:
        """Pin the longest readable (published or queued) prefix of ``spec.keys``; locations are file paths."""
        with self._lock:
            entries = []
            for key in spec.keys:
                entry = self._entries.get(key)
                if entry is None or not entry.readable:
                    break
                entries.append(entry)
            now = self._clock()
            for entry in entries:
                entry.pins += 1
                entry.hit_count += 1
                entry.last_access = now
            n = len(entries)
            self._hits += n
            self._misses += len(spec.keys) - n
            ticket = next(self._ticket_ids)
            self._tickets[ticket] = _Ticket(TransferDirection.LOAD, tuple(entries), [])
            return KVTransferPlan(
                ticket=ticket, direction=TransferDirection.LOAD, tier=spec.tier, keys=spec.keys[:n],
                block_ids=spec.block_ids[:n], locations=tuple(e.path for e in entries), skipped=spec.keys[n:],
            )

    def read(self, plan: KVTransferPlan) -> LoadedBlocks:
        """Read and verify the plan's blocks, in order, stopping at the first bad one.

        A block that fails verification (corrupt, truncated, missing, foreign) is dropped from
        the index and its file deleted; it is listed in ``failed`` and must be recomputed.
        """
        with self._lock:
            ticket = self._ticket(plan, TransferDirection.LOAD)
            entries = ticket.entries
        keys, payloads = [], []
        for entry in entries:
            queued = entry.queued_payload
            if queued is not None:
                keys.append(entry.key)
                payloads.append(queued)
                continue
            try:
                payload = self._read_verified(entry)
            except (OSError, BlockFileError) as exc:
                logger.warning("SSD KV cache: block %s failed verification (%s); it will be recomputed", entry.key, exc)
                with self._lock:
                    self._corrupt += 1
                    ticket.failed.append(entry.key)
                    self._drop(entry, delete=True)
                break
            keys.append(entry.key)
            payloads.append(payload)
        with self._lock:
            ticket.read_ok = len(keys)
        return LoadedBlocks(tuple(keys), tuple(payloads), tuple(ticket.failed))

    def _read_verified(self, entry: _Entry) -> bytes:
        with open(entry.path, "rb") as fh:
            data = fh.read()
        header = decode_header(data)
        if header.key != entry.key:
            raise BlockFileError("file holds another block")
        if header.fingerprint != self.fingerprint:
            raise BlockFileError("schema fingerprint differs")
        payload = data[header.header_len :]
        if len(payload) != header.payload_len or header.payload_len != self.payload_bytes:
            raise BlockFileError(f"payload is {len(payload)} bytes, expected {self.payload_bytes}")
        if zlib.crc32(payload) != header.payload_crc:
            raise BlockFileError("payload checksum mismatch")
        return payload

    def complete_load(self, plan: KVTransferPlan, success: bool = True) -> LoadReport:
        """Unpin the plan's blocks; report what was delivered and what failed verification."""
        with self._lock:
            ticket = self._ticket(plan, TransferDirection.LOAD)
            del self._tickets[plan.ticket]
            for entry in ticket.entries:
                if self._entries.get(entry.key) is entry:
                    entry.pins -= 1
            n = ticket.read_ok if ticket.read_ok is not None else len(ticket.entries) - len(ticket.failed)
            loaded = tuple(e.key for e in ticket.entries[:n]) if success else ()
            self._loaded += len(loaded)
            self._bytes_read += len(loaded) * self.payload_bytes
            return LoadReport(plan.ticket, loaded, tuple(ticket.failed))

    def get(self, keys: Sequence[KVBlockKey]) -> LoadedBlocks:
        """prepare_load + read + complete_load."""
        plan = self.prepare_load(LoadSpec(tuple(keys), (0,) * len(keys), KVTier.SSD))
        try:
            return self.read(plan)
        finally:
            self.complete_load(plan, success=True)

    # ------------------------------------------------------------- queries

    def _is_published(self, entry: _Entry) -> bool:
        return entry.status is _Status.PUBLISHED

    def _drop_evicted(self, entry: _Entry) -> None:
        self._drop(entry, delete=True)
        self._evicted += 1

    def has(self, key: KVBlockKey) -> bool:
        """Whether ``key`` can be read: published, or queued for writing (no hit/miss counted)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.readable

    def lineage(self, key: KVBlockKey) -> BlockLineage | None:
        """Lineage stored with a readable ``key`` (None when unknown or absent)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.lineage if entry is not None and entry.readable else None

    def keys(self) -> tuple[KVBlockKey, ...]:
        """Published keys (e.g. to seed a radix index's SSD locations after a restart)."""
        with self._lock:
            return tuple(k for k, e in self._entries.items() if e.status is _Status.PUBLISHED)

    def path_of(self, key: KVBlockKey) -> str:
        return str(self.directory / block_file_name(key))

    def stats(self) -> tuple[TierStats, ...]:
        with self._lock:
            capacity = self.capacity_bytes // self._min_file_size
            used = min(len(self._entries), capacity)
            pinned = sum(1 for e in self._entries.values() if e.pins or e.status is not _Status.PUBLISHED)
            return (
                TierStats(
                    tier=KVTier.SSD, capacity_blocks=capacity, used_blocks=used, pinned_blocks=min(pinned, used),
                    hits=self._hits, misses=self._misses, stored_blocks=self._stored, loaded_blocks=self._loaded,
                    evicted_blocks=self._evicted, bytes_written=self._bytes_written, bytes_read=self._bytes_read,
                ),
            )

    def ssd_stats(self) -> SsdStats:
        with self._lock:
            return SsdStats(
                directory=str(self.directory), enabled=self.enabled, disabled_reason=self.disabled_reason,
                capacity_bytes=self.capacity_bytes, used_bytes=self._used_bytes,
                num_blocks=sum(1 for e in self._entries.values() if e.status is _Status.PUBLISHED),
                pending_writes=self._pending, corrupt_blocks=self._corrupt, failed_writes=self._failed_writes,
                ignored_files=self._ignored, removed_temp_files=self._removed_tmp,
            )

    def drain_events(self) -> tuple[TierEvent, ...]:
        with self._lock:
            events = tuple(self._events)
            self._events.clear()
            return events

    def close(self, wait: bool = True) -> None:
        """Stop the writers (after draining the queue when ``wait``)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> SsdBlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unlink_quiet(path: str | os.PathLike[str]) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.debug("SSD KV cache: cannot remove %s: %s", path, exc)
        return False


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("SSD KV cache: fsync of directory %s failed: %s", directory, exc)
    finally:
        os.close(fd)
