"""``shm``: read a peer's ``/dev/shm`` segment directly (peers on the same host).

The client maps the owner's segment once (pre-faulted) and copies each chunk with one
``memmove`` from the mapping into the destination: a single memory copy per byte, no socket,
no staging. ``overlap_streams`` worker threads each take a contiguous stripe of the chunks
and copy and verify them one after the other, so the checksum reads a chunk while it is still
in the core's cache and one worker's copy overlaps another's verification (``memmove``
releases the GIL). Copies deliberately bypass torch: its intra-op thread pool makes
chunk-sized copies much slower on a busy host.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from sagellm.comm_backend.backends.base import ChunkTask, TransportBackend
from sagellm.comm_backend.checksum import TransferError, checksum
from sagellm.comm_backend.memory import RegisteredMemory


def address_of(view: memoryview) -> int:
    """Address of a writable, contiguous buffer's first byte."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


class ShmBackend(TransportBackend):
    name = "shm"

    def __init__(self) -> None:
        self._memory: RegisteredMemory | None = None
        self._base = 0
        self._workers: list[tuple[threading.Thread, queue.SimpleQueue]] = []

    def server_hello(self, buffer) -> dict[str, Any]:
        if not buffer.memory.shared:
            raise TransferError("this peer's transfer buffer is not in shared memory; use backend tcp")
        return {"segment": buffer.memory.name, "nbytes": buffer.memory.nbytes}

    def client_open(self, link, hello: dict[str, Any]) -> None:
        info = hello["backend_info"]
        try:
            self._memory = RegisteredMemory.attach(info["segment"], int(info["nbytes"]))
        except (OSError, ValueError) as exc:
            raise TransferError(f"shm: cannot map the peer's segment {info.get('segment')!r} "
                                f"(is the peer on another host? use backend tcp): {exc}") from exc
        self._base = address_of(self._memory.view)
        # stripe workers live as long as the link: starting threads per read costs more than a small copy
        for _ in range(max(1, link.config.overlap_streams) if link.config.overlap_streams > 1 else 0):
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            worker = threading.Thread(target=self._work, args=(jobs,), name="sagellm-shm-copy", daemon=True)
            worker.start()
            self._workers.append((worker, jobs))

    def _copy(self, task: ChunkTask) -> ChunkTask:
        ctypes.memmove(address_of(task.dest), self._base + task.src_offset, task.nbytes)
        return task

    def _work(self, jobs: queue.SimpleQueue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            tasks, done = job
            try:
                for task in tasks:
                    self._copy(task)
                    task.ok = checksum(task.dest) == task.checksum
                    done.put(task)
            except BaseException as exc:  # surfaced by fetch in the caller's thread
                done.put(exc)

    def fetch(self, link, tasks: Sequence[ChunkTask]) -> Iterator[ChunkTask]:
        if self._memory is None:
            raise TransferError("shm: fetch before client_open")
        for task in tasks:
            if task.src_offset < 0 or task.src_offset + task.nbytes > self._memory.nbytes:
                raise TransferError(f"shm: chunk [{task.src_offset}, +{task.nbytes}) outside the peer's segment")
        streams = min(len(self._workers), len(tasks))
        if streams <= 1:
            for task in tasks:
                self._copy(task)
                yield task  # verified by the caller right away, while the chunk is cache-hot
            return
        done: queue.SimpleQueue = queue.SimpleQueue()
        size, extra = divmod(len(tasks), streams)
        start = 0
        for index in range(streams):
            end = start + size + (1 if index < extra else 0)
            self._workers[index][1].put((tasks[start:end], done))
            start = end
        received = 0
        try:
            while received < len(tasks):
                item = done.get()
                if isinstance(item, BaseException):
                    raise TransferError(f"shm: copy failed: {item}") from item
                received += 1
                yield item
        finally:
            while received < len(tasks):  # let the stripes finish before the caller reuses the buffers
                item = done.get()
                received += 1 if not isinstance(item, BaseException) else len(tasks)

    def close(self) -> None:
        for worker, jobs in self._workers:
            jobs.put(None)
        for worker, _ in self._workers:
            worker.join(timeout=10)
        self._workers = []
        if self._memory is not None:
            self._memory.close()
            self._memory = None
