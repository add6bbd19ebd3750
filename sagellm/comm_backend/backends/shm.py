"""``shm``: read a peer's ``/dev/shm`` segment directly (peers on the same host).

The client maps the owner's segment once (pre-faulted) and copies each chunk with one
``torch`` ``copy_`` from the mapping into the destination: a single memory copy per byte,
no socket. Copies run on a worker thread (``copy_`` releases the GIL) so the next chunk is
copied while the caller verifies the previous one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.checksum import TransferError
from sagellm.comm_backend.memory import RegisteredMemory


class ShmBackend(TransportBackend):
    name = "shm"

    def __init__(self) -> None:
        self._memory: RegisteredMemory | None = None
        self._source = None
        self._pool: ThreadPoolExecutor | None = None
        self._depth = 1

    def server_hello(self, buffer) -> dict[str, Any]:
        if not buffer.memory.shared:
            raise TransferError("this peer's transfer buffer is not in shared memory; use backend tcp")
        return {"segment": buffer.memory.name, "nbytes": buffer.memory.nbytes}

    def client_open(self, link, hello: dict[str, Any]) -> None:
        import torch

        info = hello["backend_info"]
        try:
            self._memory = RegisteredMemory.attach(info["segment"], int(info["nbytes"]))
        except (OSError, ValueError) as exc:
            raise TransferError(f"shm: cannot map the peer's segment {info.get('segment')!r} "
                                f"(is the peer on another host? use backend tcp): {exc}") from exc
        self._source = self._memory.tensor()
        self._depth = max(1, link.config.overlap_streams)
        self._pool = ThreadPoolExecutor(max_workers=self._depth, thread_name_prefix="sagellm-shm")
        self._torch = torch

    def _copy(self, task: ChunkTask) -> ChunkTask:
        dest = self._torch.frombuffer(task.dest, dtype=self._torch.uint8)
        dest.copy_(self._source[task.src_offset : task.src_offset + task.nbytes])
        return task

    def fetch(self, link, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        if self._source is None:
            raise TransferError("shm: fetch before client_open")
        for task in tasks:
            if task.src_offset < 0 or task.src_offset + task.nbytes > self._memory.nbytes:
                raise TransferError(f"shm: chunk [{task.src_offset}, +{task.nbytes}) outside the peer's segment")
        in_flight: deque = deque()
        pending = iter(tasks)
        for task in pending:
            in_flight.append(self._pool.submit(self._copy, task))
            if len(in_flight) >= self._depth + 1:
                break
        while in_flight:
            done = in_flight.popleft().result()
            nxt = next(pending, None)
            if nxt is not None:
                in_flight.append(self._pool.submit(self._copy, nxt))
            yield done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._source = None
        if self._memory is not None:
            self._memory.close()
            self._memory = None
