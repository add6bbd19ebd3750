"""``mooncake``: RDMA (or TCP) reads through the Mooncake transfer engine, when it is installed.

The peer registers its transfer buffer with its own Mooncake engine and announces the
engine's session (``host:rpc_port``) and the buffer's address; the client registers a landing
buffer of its own and issues ``transfer_sync_read`` per chunk, then copies the chunk into its
destination. Handshakes use Mooncake's ``P2PHANDSHAKE`` mode (no metadata server). Protocol
and device come from ``SAGELLM_MOONCAKE_PROTOCOL`` (``rdma``, default ``tcp``) and
``SAGELLM_MOONCAKE_DEVICE`` (an RDMA NIC name, empty for TCP).

Not exercised on the CPU development host (the package is not installed there); its tests
skip without it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.checksum import TransferError

LANDING_BYTES = 64 << 20


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _engine(host: str):
    from mooncake.engine import TransferEngine

    engine = TransferEngine()
    protocol = os.environ.get("SAGELLM_MOONCAKE_PROTOCOL", "tcp")
    device = os.environ.get("SAGELLM_MOONCAKE_DEVICE", "")
    result = engine.initialize(host, "P2PHANDSHAKE", protocol, device)
    if result != 0:
        raise TransferError(f"mooncake: initialize({host!r}, P2PHANDSHAKE, {protocol!r}, {device!r}) returned {result}")
    return engine


class MooncakeBackend(TransportBackend):
    name = "mooncake"

    def __init__(self) -> None:
        self._engine = None
        self._landing: bytearray | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import mooncake.engine  # noqa: F401
        except ImportError as exc:
            return f"mooncake-transfer-engine is not installed ({exc})"
        return None

    def server_hello(self, buffer) -> dict[str, Any]:
        if self._engine is None:
            host = os.environ.get("SAGELLM_MOONCAKE_HOST", "127.0.0.1")
            self._engine = _engine(host)
            self._base = _address(buffer.memory.view)
            result = self._engine.register_memory(self._base, buffer.memory.nbytes)
            if result != 0:
                raise TransferError(f"mooncake: register_memory returned {result}")
            self._session = f"{host}:{self._engine.get_rpc_port()}"
        return {"session": self._session, "base": self._base}

    def client_open(self, link, hello: dict[str, Any]) -> None:
        info = hello["backend_info"]
        self._session, self._remote_base = info["session"], int(info["base"])
        self._engine = _engine(os.environ.get("SAGELLM_MOONCAKE_HOST", "127.0.0.1"))
        self._landing = bytearray(max(LANDING_BYTES, link.config.chunk_bytes))
        self._landing_view = memoryview(self._landing)
        self._landing_base = _address(self._landing_view)
        result = self._engine.register_memory(self._landing_base, len(self._landing))
        if result != 0:
            raise TransferError(f"mooncake: register_memory returned {result}")

    def fetch(self, link, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        for task in tasks:
            if task.nbytes > len(self._landing):
                raise TransferError(f"mooncake: chunk of {task.nbytes} bytes exceeds the landing buffer")
            result = self._engine.transfer_sync_read(self._session, self._landing_base, self._remote_base + task.src_offset, task.nbytes)
            if result != 0:
                raise TransferError(f"mooncake: transfer_sync_read returned {result}")
            task.dest[:] = self._landing_view[: task.nbytes]
            yield task

    def close(self) -> None:
        self._engine = None
