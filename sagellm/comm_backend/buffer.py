"""``TransferBuffer``: keyed objects in fixed-size slots of registered memory, served to peers.

The owner (a prefill engine) writes each object once (:meth:`TransferBuffer.put`) together
with a small ``meta`` (for KV blocks: the block's token ids) and per-chunk checksums; readers
ask for a run of keys (:meth:`lookup`) and get the longest present prefix of it, pinned for a
lease so that it is not overwritten while they copy. Slots are reused least recently used
first, skipping pinned ones.

A key may be announced before its bytes exist (:meth:`expect`, e.g. when a prefill is
scheduled): a lookup that reaches an expected key waits for it (bounded by the caller's
``wait_s``) instead of reporting a miss; :meth:`forget_expected` ends the wait when the bytes
will never come.

Thread-safe: the server's connection threads read while the owner writes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sagellm.comm_backend.checksum import chunk_checksums
from sagellm.comm_backend.memory import RegisteredMemory

DEFAULT_LEASE_S = 30.0


@dataclass(frozen=True)
class StoredObject:
    """Where one object lives in the buffer, and how to check it.

    Attributes:
        key: the object's key (for KV blocks, the chained content hash).
        offset: byte offset of its slot in the registered memory.
        nbytes: payload length.
        meta: small owner data stored beside it (token ids of a KV block).
        checksums: xxh3-64 of each ``chunk_bytes`` chunk of the payload.
    """

    key: bytes
    offset: int
    nbytes: int
    meta: bytes
    checksums: tuple[int, ...]

    def to_wire(self) -> dict:
        return {"key": self.key.hex(), "offset": self.offset, "nbytes": self.nbytes,
                "meta": self.meta.hex(), "checksums": [f"{c:016x}" for c in self.checksums]}

    @classmethod
    def from_wire(cls, data: dict) -> StoredObject:
        return cls(bytes.fromhex(data["key"]), int(data["offset"]), int(data["nbytes"]),
                   bytes.fromhex(data["meta"]), tuple(int(c, 16) for c in data["checksums"]))


@dataclass
class _Slot:
    index: int
    obj: StoredObject | None = None
    pinned_until: float = 0.0


class TransferBuffer:
    """``num_slots`` slots of ``slot_bytes`` each in one :class:`RegisteredMemory`.

    Args:
        slot_bytes: the largest object.
        num_slots: how many objects fit.
        chunk_bytes: checksum (and transfer) granularity.
        shared: place the memory in ``/dev/shm`` so the shm backend can map it.
        lease_s: how long a lookup pins the objects it returned.
    """

    def __init__(self, slot_bytes: int, num_slots: int, *, chunk_bytes: int, shared: bool, lease_s: float = DEFAULT_LEASE_S):
        for name, value in (("slot_bytes", slot_bytes), ("num_slots", num_slots), ("chunk_bytes", chunk_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"TransferBuffer.{name}: got {value!r}; accepted: an integer > 0")
        self.slot_bytes = slot_bytes
        self.num_slots = num_slots
        self.chunk_bytes = chunk_bytes
        self.lease_s = lease_s
        self.memory = RegisteredMemory(slot_bytes * num_slots, shared=shared)
        self._slots = [_Slot(i) for i in range(num_slots)]
        self._index: OrderedDict[bytes, _Slot] = OrderedDict()  # LRU order, oldest first
        self._expected: dict[bytes, int] = {}
        self._cond = threading.Condition()
        self.stats = {"puts": 0, "evictions": 0, "full": 0, "lookups": 0, "hits": 0}

    # ---------------------------------------------------------------- owner side
    def put(self, key: bytes, meta: bytes, write: Callable[[memoryview], None] | bytes | memoryview, nbytes: int | None = None) -> StoredObject | None:
        """Store an object; ``write`` is its bytes or a function filling the slot's view.

        Returns the stored object (the existing one when ``key`` is present), or None when
        every slot is pinned.
        """
        size = len(write) if not callable(write) else nbytes
        if size is None or not 0 < size <= self.slot_bytes:
            raise ValueError(f"TransferBuffer.put: object of {size} bytes; accepted: 1 .. {self.slot_bytes} bytes")
        with self._cond:
            present = self._index.get(key)
            if present is not None:
                self._index.move_to_end(key)
                return present.obj
            slot = self._free_slot()
            if slot is None:
                self.stats["full"] += 1
                return None
            slot.pinned_until = float("inf")  # ours while we write
        start = slot.index * self.slot_bytes
        view = self.memory.view[start : start + size]
        if callable(write):
            write(view)
        else:
            view[:] = memoryview(write).cast("B")
        obj = StoredObject(key, start, size, bytes(meta), chunk_checksums(view, self.chunk_bytes))
        with self._cond:
            slot.obj = obj
            slot.pinned_until = 0.0
            self._index[key] = slot
            self._expected.pop(key, None)
            self.stats["puts"] += 1
            self._cond.notify_all()
        return obj

    def _free_slot(self) -> _Slot | None:
        for slot in self._slots:
            if slot.obj is None and slot.pinned_until == 0.0:
                return slot
        now = time.monotonic()
        for key, slot in self._index.items():
            if slot.pinned_until <= now:
                del self._index[key]
                slot.obj = None
                self.stats["evictions"] += 1
                return slot
        return None

    def expect(self, keys: Sequence[bytes]) -> None:
        """Announce keys whose bytes are being computed (lookups wait for them)."""
        with self._cond:
            for key in keys:
                if key not in self._index:
                    self._expected[key] = self._expected.get(key, 0) + 1

    def forget_expected(self, keys: Sequence[bytes]) -> None:
        with self._cond:
            for key in keys:
                count = self._expected.get(key, 0) - 1
                if count > 0:
                    self._expected[key] = count
                else:
                    self._expected.pop(key, None)
            self._cond.notify_all()

    # ---------------------------------------------------------------- reader side
    def lookup(self, keys: Sequence[bytes], wait_s: float = 0.0) -> list[StoredObject]:
        """The longest prefix of ``keys`` present, pinned for ``lease_s``.

        A key that is expected but not yet stored is waited for, up to ``wait_s`` in all.
        """
        deadline = time.monotonic() + max(0.0, wait_s)
        found: list[StoredObject] = []
        with self._cond:
            self.stats["lookups"] += 1
            for key in keys:
                while key not in self._index and key in self._expected:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                slot = self._index.get(key)
                if slot is None:
                    break
                slot.pinned_until = max(slot.pinned_until, time.monotonic() + self.lease_s)
                self._index.move_to_end(key)
                found.append(slot.obj)
            self.stats["hits"] += len(found)
        return found

    def release(self, keys: Sequence[bytes]) -> None:
        """End the pins of a lookup."""
        with self._cond:
            for key in keys:
                slot = self._index.get(key)
                if slot is not None:
                    slot.pinned_until = 0.0

    def view(self, obj: StoredObject) -> memoryview:
        return self.memory.view[obj.offset : obj.offset + obj.nbytes]

    def __len__(self) -> int:
        with self._cond:
            return len(self._index)

    def close(self) -> None:
        self.memory.close()
