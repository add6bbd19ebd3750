"""``CommBackendProtocol``: moving byte buffers between peers, in chunks.

A transfer is described by a ``TransferRequest`` (who, which buffer tag, how many
bytes, chunk size) and answered by a ``TransferResult``. ``send`` pushes a
buffer to a peer under a tag; ``recv`` takes the buffer sent under that tag.
Backends (shared memory, TCP, torch.distributed, Mooncake...) live in
``sagellm.comm_backend``; chunking arithmetic lives here so every backend cuts
buffers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_float, check_int, check_positive_int, check_str, invalid

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TransferRequest(SerializableMixin):
    """One buffer transfer.

    Attributes:
        transfer_id: caller-unique id, echoed in the result.
        peer: the other side, in the backend's address form ("rank:1", "10.0.0.2:7000", ...).
        tag: names the buffer on both sides (e.g. a KV block key in hex).
        num_bytes: buffer size; ``send`` requires the payload to match, ``recv`` expects it.
        chunk_bytes: size of each chunk on the wire (the last may be shorter).
        priority: lower is sent first when transfers queue (same convention as requests).
        timeout_s: give up after this many seconds; None = backend default.
    """

    transfer_id: str
    peer: str
    tag: str
    num_bytes: int
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    priority: int = 0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "transfer_id", self.transfer_id)
        check_str(owner, "peer", self.peer)
        check_str(owner, "tag", self.tag)
        check_int(owner, "num_bytes", self.num_bytes, minimum=0)
        check_positive_int(owner, "chunk_bytes", self.chunk_bytes)
        check_int(owner, "priority", self.priority)
        if self.timeout_s is not None:
            check_float(owner, "timeout_s", self.timeout_s, positive=True)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_bytes // self.chunk_bytes)

    def chunk_ranges(self) -> tuple[tuple[int, int], ...]:
        """``(offset, length)`` of every chunk, covering ``num_bytes`` in order."""
        return tuple(
            (offset, min(self.chunk_bytes, self.num_bytes - offset))
            for offset in range(0, self.num_bytes, self.chunk_bytes)
        )


@dataclass(frozen=True)
class TransferResult(SerializableMixin):
    """Outcome of one transfer.

    Attributes:
        transfer_id: the request's id.
        ok: whether every byte arrived.
        bytes_moved: bytes actually moved.
        num_chunks: chunks actually moved.
        elapsed_s: wall time of the transfer.
        error: why it failed; must be non-empty exactly when ``ok`` is False.
        data: the received bytes for ``recv``; empty for ``send``.
    """

    transfer_id: str
    ok: bool
    bytes_moved: int
    num_chunks: int
    elapsed_s: float
    error: str = ""
    data: bytes = b""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "transfer_id", self.transfer_id)
        if not isinstance(self.ok, bool):
            raise invalid(owner, "ok", self.ok, "True or False")
        check_int(owner, "bytes_moved", self.bytes_moved, minimum=0)
        check_int(owner, "num_chunks", self.num_chunks, minimum=0)
        check_float(owner, "elapsed_s", self.elapsed_s, minimum=0.0)
        check_str(owner, "error", self.error, allow_empty=True)
        if self.ok == bool(self.error):
            raise invalid(owner, "error", self.error, "'' when ok is True, a message when ok is False")
        if isinstance(self.data, (bytearray, memoryview)):
            object.__setattr__(self, "data", bytes(self.data))
        if not isinstance(self.data, bytes):
            raise invalid(owner, "data", type(self.data).__name__, "bytes")

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """bytes_moved / elapsed_s; 0.0 when nothing was timed."""
        return self.bytes_moved / self.elapsed_s if self.elapsed_s > 0 else 0.0


@runtime_checkable
class CommBackendProtocol(Protocol):
    """A byte transport between peers. Implementations live in ``sagellm.comm_backend``."""

    @property
    def name(self) -> str:
        """Registry name ("shm", "tcp", "torch_dist", "mooncake", ...)."""
        ...

    def send(self, request: TransferRequest, payload: bytes | memoryview) -> TransferResult:
        """Send ``payload`` (exactly ``request.num_bytes`` long) to ``request.peer`` in chunks."""
        ...

    def recv(self, request: TransferRequest) -> TransferResult:
        """Receive the buffer sent under ``request.tag`` by ``request.peer``; bytes in ``result.data``."""
        ...

    def bandwidth_estimate(self, peer: str) -> float:
        """Expected bytes per second to ``peer`` (measured or from the topology probe)."""
        ...

    def close(self) -> None:
        """Release connections and buffers; further calls raise."""
        ...
