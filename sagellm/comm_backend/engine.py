"""``TransportEngine``: pull keyed objects out of a peer's :class:`TransferBuffer`.

One side owns bytes and serves them (:class:`TransportServer` over a ``TransferBuffer``);
the other connects (:meth:`TransportEngine.connect` → :class:`PeerLink`), asks which of a run
of keys the peer holds (:meth:`PeerLink.lookup`, which pins them) and reads them
(:meth:`PeerLink.read`) through a backend from :data:`TRANSPORTS`::

    server = TransportServer(TransferBuffer(slot_bytes, 64, chunk_bytes=1 << 20, shared=True)).start()
    link = TransportEngine(KVTransportConfig(backend="shm")).connect(server.address)
    objects = link.lookup(keys)
    stats = link.read(objects, [memoryview(bytearray(o.nbytes)) for o in objects])
    link.release([o.key for o in objects])

Reads are cut into the owner's chunks; each landed chunk is verified against the checksum
the owner computed when it stored the object, while the backend moves the next one. Chunks
that fail are fetched again up to ``max_retries`` times; after that the read raises
:class:`ChecksumMismatch` and the caller recomputes. A dead peer, a refused request or a
timeout raise :class:`TransferError`. Bytes, seconds, latency and re-sent chunks go to
``sagellm.telemetry``.

The control connection speaks :mod:`sagellm.comm_backend.protocol` frames: ``hello``
(backend, handshake data), ``lookup``, ``release`` (one-way), then the backend's own ops.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.buffer import StoredObject, TransferBuffer
from sagellm.comm_backend.checksum import ChecksumMismatch, TransferError, checksum, chunk_spans
from sagellm.comm_backend.protocol import call, parse_address, recv_header, send_frame
from sagellm.comm_backend.transport_config import TRANSPORT_BACKENDS, KVTransportConfig
from sagellm.core.registry import Registry

logger = logging.getLogger("sagellm.transport")

#: backend name -> ``TransportBackend`` subclass, imported when first used.
TRANSPORTS: Registry[type[TransportBackend]] = Registry("transport backend")
TRANSPORTS.register("shm", "sagellm.comm_backend.backends.shm:ShmBackend")
TRANSPORTS.register("tcp", "sagellm.comm_backend.backends.tcp:TcpBackend")
TRANSPORTS.register("torch_dist", "sagellm.comm_backend.backends.torch_dist:TorchDistBackend")
TRANSPORTS.register("mooncake", "sagellm.comm_backend.backends.mooncake:MooncakeBackend")
TRANSPORTS.register("dlslime", "sagellm.comm_backend.backends.dlslime:DLSlimeBackend")
assert tuple(TRANSPORTS.names()) == tuple(sorted(TRANSPORT_BACKENDS)), "TRANSPORTS and TRANSPORT_BACKENDS must agree"

DEFAULT_MAX_RETRIES = 2


def backend_status() -> dict[str, str | None]:
    """``{backend: None if usable here else why not}`` for every registered backend."""
    return {name: TRANSPORTS.get(name).unavailable_reason() for name in TRANSPORTS.names()}


def _backend(name: str) -> TransportBackend:
    cls = TRANSPORTS.get(name)
    reason = cls.unavailable_reason()
    if reason:
        raise TransferError(f"transport backend {name!r} is not usable here: {reason}")
    return cls()


@dataclass(frozen=True)
class TransferStats:
    """One read.

    Attributes:
        backend: the backend that moved the bytes.
        objects: objects read.
        nbytes: payload bytes delivered.
        chunks: chunks delivered.
        resent_chunks: chunk fetches repeated after a failed checksum.
        seconds: wall time of the read (request to last chunk verified).
    """

    backend: str
    objects: int
    nbytes: int
    chunks: int
    resent_chunks: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


# ====================================================================== server
class TransportServer:
    """Serves ``buffer`` to peers on ``host:port`` (0 = a free port), one thread per connection.

    Args:
        buffer: what is served.
        host, port: where to listen.
        backends: backend names peers may use (default: every registered one).
        info: a JSON-able dict every peer receives in the handshake (e.g. the KV layout).
    """

    def __init__(self, buffer: TransferBuffer, *, host: str = "127.0.0.1", port: int = 0,
                 backends: Sequence[str] | None = None, info: Mapping[str, Any] | None = None) -> None:
        self.buffer = buffer
        self.backends = tuple(backends) if backends is not None else tuple(TRANSPORTS.names())
        for name in self.backends:
            TRANSPORTS.get(name)  # unknown names raise, listing the valid ones
        self.info = dict(info or {})
        self._listener = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TransportServer:
        thread = threading.Thread(target=self._accept_loop, name=f"sagellm-transport-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.add(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), name="sagellm-transport-conn", daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        backend: TransportBackend | None = None
        pinned: set[bytes] = set()
        try:
            while True:
                try:
                    header = recv_header(sock)
                except (TransferError, OSError):
                    return
                op = header.get("op")
                try:
                    if op == "hello":
                        name = header.get("backend")
                        if name not in self.backends:
                            raise TransferError(f"backend {name!r} is not served here; served: {', '.join(self.backends)}")
                        if backend is not None:
                            backend.close()
                        backend = _backend(name)
                        send_frame(sock, {"ok": True, "backend": name, "backend_info": backend.server_hello(self.buffer),
                                          "chunk_bytes": self.buffer.chunk_bytes, "info": self.info})
                    elif op == "lookup":
                        keys = [bytes.fromhex(k) for k in header.get("keys", [])]
                        found = self.buffer.lookup(keys, float(header.get("wait_s", 0.0)))
                        pinned.update(obj.key for obj in found)
                        send_frame(sock, {"ok": True, "objects": [obj.to_wire() for obj in found]})
                    elif op == "release":
                        keys = [bytes.fromhex(k) for k in header.get("keys", [])]
                        self.buffer.release(keys)
                        pinned.difference_update(keys)
                        if header.get("reply", True):
                            send_frame(sock, {"ok": True})
                    elif backend is not None and op in backend.server_ops:
                        backend.server_handle(self.buffer, sock, header)
                    else:
                        raise TransferError(f"unknown op {op!r}" + ("" if backend else " (send hello first)"))
                except (TransferError, ValueError, KeyError, TypeError) as exc:
                    send_frame(sock, {"ok": False, "error": str(exc)})
        except OSError:
            return
        finally:
            if pinned:
                self.buffer.release(list(pinned))
            if backend is not None:
                backend.close()
            with self._lock:
                self._connections.discard(sock)
            sock.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the accept thread
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)

    def __enter__(self) -> TransportServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ====================================================================== client
class TransportEngine:
    """Connects to peers' transport servers with ``config``'s backend and chunk pipeline.

    Args:
        config: the transport config (backend, overlap); ``None`` = ``KVTransportConfig()``.
        max_retries: re-sends of a chunk that failed its checksum before giving up.
        connect_timeout_s, io_timeout_s: bounds on connecting and on every socket operation.
        metrics: a ``SageMetrics`` (default: ``sagellm.telemetry.metrics``).
    """

    def __init__(self, config: KVTransportConfig | None = None, *, max_retries: int = DEFAULT_MAX_RETRIES,
                 connect_timeout_s: float = 5.0, io_timeout_s: float = 60.0, metrics: Any = None) -> None:
        self.config = config or KVTransportConfig()
        self.max_retries = max_retries
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        if metrics is None:
            from sagellm.telemetry import metrics as default_metrics

            metrics = default_metrics
        self.metrics = metrics

    def connect(self, address: str) -> PeerLink:
        """Open a link to the transport server at ``host:port`` (handshake included)."""
        return PeerLink(self, address)


class PeerLink:
    """A connection to one peer; use it from one thread at a time (reads are serialized)."""

    def __init__(self, engine: TransportEngine, address: str) -> None:
        self.engine = engine
        self.config = engine.config
        self.address = address
        self.closed = False
        host, port = parse_address(address)
        self._lock = threading.Lock()
        try:
            self.control = socket.create_connection((host, port), timeout=engine.connect_timeout_s)
        except OSError as exc:
            raise TransferError(f"cannot connect to transport peer {address}: {exc}") from exc
        self.control.settimeout(engine.io_timeout_s)
        # small frames back to back (a one-way release, then a lookup): no Nagle/delayed-ACK stalls
        self.control.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.backend_name = self.config.backend
        self.backend = _backend(self.backend_name)
        try:
            self.hello = call(self.control, {"op": "hello", "backend": self.backend_name})
            self.chunk_bytes = int(self.hello["chunk_bytes"])
            self.info: dict[str, Any] = dict(self.hello.get("info") or {})
            self.backend.client_open(self, self.hello)
        except (OSError, TransferError) as exc:
            self.close()
            if isinstance(exc, TransferError):
                raise
            raise TransferError(f"handshake with {address} failed: {exc}") from exc

    # ------------------------------------------------------------------ control
    def _call(self, header: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        try:
            if timeout_s is not None:
                self.control.settimeout(timeout_s)
            return call(self.control, header)
        except OSError as exc:
            self.close()
            raise TransferError(f"transport peer {self.address}: {type(exc).__name__}: {exc}") from exc
        finally:
            if timeout_s is not None and not self.closed:
                self.control.settimeout(self.engine.io_timeout_s)

    def lookup(self, keys: Sequence[bytes], wait_s: float = 0.0) -> list[StoredObject]:
        """The longest prefix of ``keys`` the peer holds, pinned until :meth:`release`.

        ``wait_s`` bounds how long the peer waits for keys it expects but has not stored yet.
        """
        with self._lock:
            reply = self._call({"op": "lookup", "keys": [k.hex() for k in keys], "wait_s": wait_s},
                               timeout_s=self.engine.io_timeout_s + wait_s)
        objects = [StoredObject.from_wire(item) for item in reply["objects"]]
        if [o.key for o in objects] != list(keys[: len(objects)]):
            raise TransferError(f"transport peer {self.address} answered keys that were not asked for")
        return objects

    def release(self, keys: Sequence[bytes]) -> None:
        """End the pins of a lookup (one-way: no reply is awaited, saving a round trip)."""
        if not keys or self.closed:
            return
        with self._lock:
            try:
                send_frame(self.control, {"op": "release", "keys": [k.hex() for k in keys], "reply": False})
            except OSError as exc:
                self.close()
                raise TransferError(f"transport peer {self.address}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ data
    def read(self, objects: Sequence[StoredObject], dests: Sequence[memoryview]) -> TransferStats:
        """Copy each object into its destination (a writable bytes-like object of ``nbytes``).

        Raises:
            ChecksumMismatch: chunks still failed after ``max_retries`` re-sends.
            TransferError: the peer died, refused or timed out.
        """
        if len(objects) != len(dests):
            raise ValueError(f"read: {len(objects)} objects but {len(dests)} destinations")
        tasks: list[ChunkTask] = []
        for index, (obj, dest) in enumerate(zip(objects, dests)):
            view = memoryview(dest).cast("B")
            if view.readonly or len(view) != obj.nbytes:
                raise ValueError(f"read: destination {index} must be a writable buffer of {obj.nbytes} bytes, got {len(view)}"
                                 + (" (read-only)" if view.readonly else ""))
            spans = chunk_spans(obj.nbytes, self.chunk_bytes)
            if len(spans) != len(obj.checksums):
                raise TransferError(f"object {obj.key.hex()[:16]}: {len(obj.checksums)} checksums for {len(spans)} chunks")
            for chunk, ((start, length), expected) in enumerate(zip(spans, obj.checksums)):
                tasks.append(ChunkTask(index, chunk, obj.offset + start, length, view[start : start + length], expected))
        started = time.perf_counter()
        resent = 0
        pending = tasks
        with self._lock:
            for attempt in range(self.engine.max_retries + 1):
                failed = []
                try:
                    for task in pending:
                        task.ok = None
                    for task in self.backend.fetch(self, pending):
                        ok = task.ok if task.ok is not None else checksum(task.dest) == task.checksum
                        if not ok:
                            failed.append(task)
                except TransferError:
                    self.close()
                    raise
                except OSError as exc:
                    self.close()
                    raise TransferError(f"transport peer {self.address}: {type(exc).__name__}: {exc}") from exc
                if not failed:
                    break
                if attempt < self.engine.max_retries:
                    resent += len(failed)
                    logger.warning("transport %s from %s: %d chunk(s) failed their checksum; fetching again",
                                   self.backend_name, self.address, len(failed))
                pending = failed
        if failed:
            self.engine.metrics.transport_resent_chunks(self.backend_name, resent, recovered=False)
            first = failed[0]
            raise ChecksumMismatch(
                f"transport {self.backend_name} from {self.address}: {len(failed)} chunk(s) still failed their checksum "
                f"after {self.engine.max_retries} re-send(s) (first: object {first.object_index} chunk {first.chunk_index})"
            )
        seconds = time.perf_counter() - started
        nbytes = sum(obj.nbytes for obj in objects)
        if resent:
            self.engine.metrics.transport_resent_chunks(self.backend_name, resent, recovered=True)
        self.engine.metrics.transport_transfer(self.backend_name, nbytes=nbytes, seconds=seconds)
        return TransferStats(self.backend_name, len(objects), nbytes, len(tasks), resent, seconds)

    def close(self) -> None:
        if getattr(self, "closed", False):
            return
        self.closed = True
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
        try:
            self.control.close()
        except OSError:
            pass

    def __enter__(self) -> PeerLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
