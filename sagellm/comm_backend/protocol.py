"""Frames of the transport's control connection (and of the tcp backend's data).

A frame is a 4-byte big-endian header length, a UTF-8 JSON object, then ``header["payload"]``
raw bytes when that field is present. Requests carry ``"op"``; replies carry ``"ok"`` (and
``"error"`` when false).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from sagellm.comm_backend.checksum import TransferError

MAX_HEADER_BYTES = 16 << 20
_LEN = struct.Struct(">I")


def send_frame(sock: socket.socket, header: dict[str, Any], payload=None) -> None:
    """Send ``header`` (and ``payload``, a bytes-like object, without copying it)."""
    if payload is not None:
        payload = memoryview(payload).cast("B")
        header = {**header, "payload": len(payload)}
    body = json.dumps(header, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(body)) + body)
    if payload is not None and len(payload):
        sock.sendall(payload)


def recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; a closed connection raises ``TransferError``."""
    view = memoryview(view).cast("B")
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            raise TransferError(f"connection closed by the peer after {got} of {len(view)} bytes")
        got += n


def recv_header(sock: socket.socket) -> dict[str, Any]:
    """The next frame's header (its payload, if any, is left on the socket)."""
    size = bytearray(_LEN.size)
    recv_exact_into(sock, memoryview(size))
    (length,) = _LEN.unpack(size)
    if length > MAX_HEADER_BYTES:
        raise TransferError(f"frame header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    body = bytearray(length)
    recv_exact_into(sock, memoryview(body))
    try:
        header = json.loads(body)
    except ValueError as exc:
        raise TransferError(f"malformed frame header: {exc}") from None
    if not isinstance(header, dict):
        raise TransferError("malformed frame header: not a JSON object")
    return header


def recv_payload(sock: socket.socket, header: dict[str, Any]) -> bytes:
    size = int(header.get("payload", 0))
    data = bytearray(size)
    recv_exact_into(sock, memoryview(data))
    return bytes(data)


def call(sock: socket.socket, header: dict[str, Any], payload=None) -> dict[str, Any]:
    """Send a request and return its reply header; a reply with ``ok`` false raises."""
    send_frame(sock, header, payload)
    reply = recv_header(sock)
    if not reply.get("ok", False):
        raise TransferError(f"peer refused {header.get('op')!r}: {reply.get('error', 'no reason given')}")
    return reply


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` -> (host, port), with a clear error."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"transport address: got {address!r}; accepted: HOST:PORT such as 127.0.0.1:7100")
    return host.strip("[]"), int(port)
