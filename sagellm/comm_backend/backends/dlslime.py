"""``dlslime``: one-sided RDMA reads through DLSlime, when it is installed and a NIC exists.

The peer registers its transfer buffer as memory region ``sagellm-buffer`` on an
``RDMAEndpoint`` and announces the endpoint's info; the client registers a landing region,
connects the two endpoints and reads each chunk with ``read_batch`` (remote offset =
``target_offset``, local = ``source_offset``), then copies it into the destination. The NIC is
the first of ``available_nic()`` unless ``SAGELLM_DLSLIME_NIC`` names one.

Not exercised on the CPU development host (no package, no RDMA NIC); its tests skip.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.checksum import TransferError

LANDING_BYTES = 64 << 20
REGION = "sagellm-buffer"


def _endpoint():
    from dlslime import RDMAEndpoint, available_nic

    nic = os.environ.get("SAGELLM_DLSLIME_NIC") or next(iter(available_nic()), None)
    if not nic:
        raise TransferError("dlslime: no RDMA NIC available")
    return RDMAEndpoint(device_name=nic, ib_port=1, link_type="RoCE")


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class DLSlimeBackend(TransportBackend):
    name = "dlslime"
    server_ops = ("dlslime_connect",)

    def __init__(self) -> None:
        self._endpoint = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import dlslime  # noqa: F401
        except ImportError as exc:
            return f"dlslime is not installed ({exc})"
        return None

    def server_hello(self, buffer) -> dict[str, Any]:
        self._endpoint = _endpoint()
        self._endpoint.register_memory_region(REGION, _address(buffer.memory.view), 0, buffer.memory.nbytes)
        return {"endpoint": self._endpoint.endpoint_info}

    def server_handle(self, buffer, sock, header: dict[str, Any]) -> None:
        from sagellm.comm_backend.protocol import send_frame

        self._endpoint.connect(header["endpoint"])
        send_frame(sock, {"ok": True})

    def client_open(self, link, hello: dict[str, Any]) -> None:
        from sagellm.comm_backend.protocol import call

        self._endpoint = _endpoint()
        self._landing = bytearray(max(LANDING_BYTES, link.config.chunk_bytes))
        self._landing_view = memoryview(self._landing)
        self._endpoint.register_memory_region(REGION, _address(self._landing_view), 0, len(self._landing))
        self._endpoint.connect(hello["backend_info"]["endpoint"])
        call(link.control, {"op": "dlslime_connect", "endpoint": self._endpoint.endpoint_info})

    def fetch(self, link, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        from dlslime import Assignment

        for task in tasks:
            if task.nbytes > len(self._landing):
                raise TransferError(f"dlslime: chunk of {task.nbytes} bytes exceeds the landing buffer")
            self._endpoint.read_batch([Assignment(mr_key=REGION, target_offset=task.src_offset, source_offset=0, length=task.nbytes)])
            task.dest[:] = self._landing_view[: task.nbytes]
            yield task

    def close(self) -> None:
        self._endpoint = None
