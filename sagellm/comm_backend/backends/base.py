"""What a transport backend implements: moving chunks of a peer's registered memory into ours.

The transport engine owns the control connection (lookups, pins, checksums, re-sends); a
backend only moves bytes. Each connection gets its own backend instance on both sides.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from sagellm.comm_backend.buffer import TransferBuffer
    from sagellm.comm_backend.engine import PeerLink


@dataclass
class ChunkTask:
    """One chunk to move.

    Attributes:
        object_index: which object of the read it belongs to.
        chunk_index: its index within the object.
        src_offset: absolute offset in the peer's registered memory.
        nbytes: length.
        dest: where it lands (a writable byte ``memoryview`` of ``nbytes``).
        checksum: the expected xxh3-64.
        ok: whether the landed bytes matched ``checksum``; backends that verify on their own
            threads set it, otherwise the transport engine verifies (None).
    """

    object_index: int
    chunk_index: int
    src_offset: int
    nbytes: int
    dest: memoryview
    checksum: int
    ok: bool | None = None

    def wire(self) -> list[int]:
        return [self.src_offset, self.nbytes]


class TransportBackend(ABC):
    """Moves chunks; one instance per connection and side.

    Server side: :meth:`server_hello` adds what clients need to the handshake reply;
    :meth:`server_handle` answers the backend's own ops (``server_ops``).
    Client side: :meth:`client_open` once after the handshake, :meth:`fetch` per read.
    """

    name: ClassVar[str]
    server_ops: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run here (a missing package), None when it can."""
        return None

    def server_hello(self, buffer: TransferBuffer) -> dict[str, Any]:
        return {}

    def server_handle(self, buffer: TransferBuffer, sock: socket.socket, header: dict[str, Any]) -> None:
        raise NotImplementedError(f"{self.name}: no op {header.get('op')!r}")

    def client_open(self, link: PeerLink, hello: dict[str, Any]) -> None:
        """Prepare to read from the peer (map its memory, join a group, ...)."""

    @abstractmethod
    def fetch(self, link: PeerLink, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        """Move every task's bytes into ``task.dest``; yield each task once its bytes landed.

        Implementations keep the next chunk moving while the one yielded is verified (the
        overlap of copy and checksum), either by the caller or, having set ``task.ok``, by
        themselves.
        """

    def close(self) -> None:
        """Release what :meth:`client_open` or the server side set up."""
