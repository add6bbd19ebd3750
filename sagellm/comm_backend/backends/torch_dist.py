"""``torch_dist``: chunks move through a two-rank ``torch.distributed`` Gloo group per connection.

The peer (rank 0) hosts a ``TCPStore`` for the pair, the client joins as rank 1, and each
chunk is a ``send``/``recv`` of a ``uint8`` tensor straight into the destination. The group
is private to the connection (built with ``ProcessGroupGloo`` directly, not
``init_process_group``), so it does not disturb a default group the engine may have. Up to
``overlap_streams`` receives are posted ahead of the chunk being verified. On accelerator
hosts the same shape works with the vendor's collective library; this backend uses Gloo,
which ships with every torch build.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.checksum import TransferError
from sagellm.comm_backend.protocol import recv_header, send_frame

GROUP_TIMEOUT_S = 30.0


def _gloo_group(host: str, port: int, rank: int, *, master: bool):
    import torch.distributed as dist

    store = dist.TCPStore(host, port, world_size=2, is_master=master, timeout=timedelta(seconds=GROUP_TIMEOUT_S),
                          wait_for_workers=False)
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    options._timeout = timedelta(seconds=GROUP_TIMEOUT_S)
    return store, dist.ProcessGroupGloo(store, rank, 2, options)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class TorchDistBackend(TransportBackend):
    name = "torch_dist"
    server_ops = ("gloo_init", "gloo_read")

    def __init__(self) -> None:
        self._store = None
        self._group = None
        self._tag = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import torch.distributed as dist
        except ImportError as exc:  # pragma: no cover - torch always has it on Linux
            return f"torch.distributed is not importable: {exc}"
        if not dist.is_available() or not dist.is_gloo_available():
            return "this torch build has no Gloo backend"
        return None

    # ------------------------------------------------------------- server (rank 0)
    def server_handle(self, buffer, sock: socket.socket, header: dict[str, Any]) -> None:
        if header["op"] == "gloo_init":
            host = sock.getsockname()[0]
            port = _free_port(host)
            send_frame(sock, {"ok": True, "host": host, "port": port})
            self._store, self._group = _gloo_group(host, port, 0, master=True)
            return
        if self._group is None:
            send_frame(sock, {"ok": False, "error": "gloo_read before gloo_init"})
            return
        chunks = header.get("chunks") or []
        memory = buffer.memory
        for offset, nbytes in chunks:
            if offset < 0 or offset + nbytes > memory.nbytes:
                send_frame(sock, {"ok": False, "error": f"chunk [{offset}, +{nbytes}) outside the buffer"})
                return
        send_frame(sock, {"ok": True})
        source = memory.tensor()
        tag = int(header.get("tag", 0))
        for index, (offset, nbytes) in enumerate(chunks):
            self._group.send([source[offset : offset + nbytes]], 1, tag + index).wait()

    # ------------------------------------------------------------- client (rank 1)
    def client_open(self, link, hello: dict[str, Any]) -> None:
        self._control = link.control
        send_frame(self._control, {"op": "gloo_init"})
        reply = recv_header(self._control)
        if not reply.get("ok"):
            raise TransferError(f"torch_dist: peer refused the group: {reply.get('error')}")
        self._store, self._group = _gloo_group(reply["host"], int(reply["port"]), 1, master=False)
        self._depth = max(1, link.config.overlap_streams)

    def fetch(self, link, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        import torch

        if self._group is None:
            raise TransferError("torch_dist: fetch before client_open")
        tag = self._tag
        self._tag += len(tasks)
        send_frame(self._control, {"op": "gloo_read", "tag": tag, "chunks": [task.wire() for task in tasks]})
        reply = recv_header(self._control)
        if not reply.get("ok"):
            raise TransferError(f"torch_dist: peer refused the read: {reply.get('error')}")
        posted: deque = deque()
        queue = iter(enumerate(tasks))

        def post() -> None:
            item = next(queue, None)
            if item is not None:
                index, task = item
                dest = torch.frombuffer(task.dest, dtype=torch.uint8)
                posted.append((task, self._group.recv([dest], 0, tag + index)))

        for _ in range(self._depth):
            post()
        while posted:
            task, work = posted.popleft()
            try:
                work.wait()
            except RuntimeError as exc:
                raise TransferError(f"torch_dist: receive failed: {exc}") from exc
            post()
            yield task

    def close(self) -> None:
        self._group = None
        self._store = None
        self._control = None  # the link owns the socket
