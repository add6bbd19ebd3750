"""``tcp``: chunks stream over a dedicated socket (peers on any host).

The client sends one ``tcp_read`` listing the chunks on its connection to the peer's transport
server and receives each chunk straight into its destination (``recv_into``, no staging copy)
while the server ``sendall``s from its registered memory.
The kernel's socket buffers keep the next chunk arriving while the caller verifies one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.checksum import TransferError
from sagellm.comm_backend.protocol import recv_exact_into, recv_header, send_frame

SOCKET_BUFFER_BYTES = 4 << 20


def tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            pass


class TcpBackend(TransportBackend):
    name = "tcp"
    server_ops = ("tcp_read",)

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def server_handle(self, buffer, sock: socket.socket, header: dict[str, Any]) -> None:
        chunks = header.get("chunks")
        if not isinstance(chunks, list):
            send_frame(sock, {"ok": False, "error": "tcp_read needs 'chunks': [[offset, nbytes], ...]"})
            return
        memory = buffer.memory
        for item in chunks:
            offset, nbytes = int(item[0]), int(item[1])
            if offset < 0 or nbytes < 0 or offset + nbytes > memory.nbytes:
                send_frame(sock, {"ok": False, "error": f"chunk [{offset}, +{nbytes}) outside the buffer"})
                return
        send_frame(sock, {"ok": True, "chunks": len(chunks)})
        for offset, nbytes in chunks:
            self.send_chunk(sock, memory.view[int(offset) : int(offset) + int(nbytes)])

    @staticmethod
    def send_chunk(sock: socket.socket, data: memoryview) -> None:
        """Send one chunk's bytes (a seam the fault tests wrap to corrupt data in flight)."""
        sock.sendall(data)

    def client_open(self, link, hello: dict[str, Any]) -> None:
        self._sock = link.control
        tune(self._sock)

    def fetch(self, link, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        if self._sock is None:
            raise TransferError("tcp: fetch before client_open")
        send_frame(self._sock, {"op": "tcp_read", "chunks": [task.wire() for task in tasks]})
        reply = recv_header(self._sock)
        if not reply.get("ok"):
            raise TransferError(f"tcp: peer refused the read: {reply.get('error')}")
        for task in tasks:
            recv_exact_into(self._sock, task.dest)
            yield task

    def close(self) -> None:
        self._sock = None  # the link owns the socket
