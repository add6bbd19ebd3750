"""Chunk checksums and the TransferBuffer: slots, LRU reuse, pins, expected keys."""

from __future__ import annotations

import os
import threading
import time

import pytest
import xxhash

from sagellm.comm_backend.buffer import StoredObject, TransferBuffer
from sagellm.comm_backend.checksum import chunk_checksums, chunk_spans
from sagellm.comm_backend.memory import RegisteredMemory


def test_chunk_spans_cover_the_payload_exactly():
    assert chunk_spans(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert chunk_spans(8, 4) == [(0, 4), (4, 4)]
    assert chunk_spans(0, 4) == []
    with pytest.raises(ValueError, match="chunk_bytes"):
        chunk_spans(10, 0)


def test_chunk_checksums_are_xxh3_of_each_chunk():
    data = bytes(range(256)) * 40
    assert chunk_checksums(data, 4096) == (
        xxhash.xxh3_64_intdigest(data[:4096]),
        xxhash.xxh3_64_intdigest(data[4096:8192]),
        xxhash.xxh3_64_intdigest(data[8192:]),
    )


def test_shared_memory_is_visible_to_a_second_mapping_and_goes_with_its_owner():
    owner = RegisteredMemory(8192, shared=True)
    assert owner.name.startswith(f"/proc/{os.getpid()}/fd/")
    owner.view[:5] = b"hello"
    other = RegisteredMemory.attach(owner.name, 8192)
    assert bytes(other.view[:5]) == b"hello"
    other.view[5:6] = b"!"
    assert bytes(owner.view[:6]) == b"hello!"
    other.close()
    assert os.path.exists(owner.name)
    owner.close()
    assert not os.path.exists(owner.name)


def test_attach_rejects_other_names():
    with pytest.raises(ValueError, match="accepted: /proc/<pid>/fd/<fd> or sagellm-kv-"):
        RegisteredMemory.attach("../etc/passwd", 10)


def test_put_lookup_returns_the_longest_present_prefix_with_checksums():
    buf = TransferBuffer(1024, 4, chunk_bytes=256, shared=False)
    a = buf.put(b"a", b"ta", b"x" * 600)
    buf.put(b"c", b"tc", b"z" * 10)
    assert a == StoredObject(b"a", 0, 600, b"ta", chunk_checksums(b"x" * 600, 256))
    found = buf.lookup([b"a", b"b", b"c"])
    assert [o.key for o in found] == [b"a"]
    assert bytes(buf.view(found[0])) == b"x" * 600
    assert StoredObject.from_wire(a.to_wire()) == a
    buf.close()


def test_put_with_a_writer_fills_the_slot_in_place():
    buf = TransferBuffer(64, 2, chunk_bytes=16, shared=False)

    def write(view):
        view[:] = bytes(range(40))

    obj = buf.put(b"k", b"", write, nbytes=40)
    assert bytes(buf.view(obj)) == bytes(range(40))
    with pytest.raises(ValueError, match="1 .. 64 bytes"):
        buf.put(b"big", b"", b"x" * 65)
    buf.close()


def test_full_buffer_reuses_the_least_recently_used_unpinned_slot():
    buf = TransferBuffer(16, 2, chunk_bytes=16, shared=False, lease_s=60)
    buf.put(b"a", b"", b"a" * 16)
    buf.put(b"b", b"", b"b" * 16)
    buf.lookup([b"a"])  # pins a, and makes it most recently used
    buf.put(b"c", b"", b"c" * 16)  # evicts b
    assert [o.key for o in buf.lookup([b"a"])] == [b"a"]
    assert buf.lookup([b"b"]) == []
    assert [o.key for o in buf.lookup([b"c"])] == [b"c"]
    assert buf.put(b"d", b"", b"d" * 16) is None  # a and c are pinned
    buf.release([b"c"])
    assert buf.put(b"d", b"", b"d" * 16) is not None
    assert buf.lookup([b"c"]) == []
    assert buf.stats["evictions"] == 2 and buf.stats["full"] == 1
    buf.close()


def test_lookup_waits_for_an_expected_key_until_it_is_stored():
    buf = TransferBuffer(16, 2, chunk_bytes=16, shared=False)
    buf.expect([b"k"])
    threading.Timer(0.2, lambda: buf.put(b"k", b"m", b"k" * 16)).start()
    found = buf.lookup([b"k"], wait_s=10.0)
    assert [o.meta for o in found] == [b"m"]
    buf.close()


def test_lookup_stops_waiting_when_the_key_is_forgotten_or_the_wait_ends():
    buf = TransferBuffer(16, 2, chunk_bytes=16, shared=False)
    buf.expect([b"k"])
    threading.Timer(0.2, lambda: buf.forget_expected([b"k"])).start()
    assert buf.lookup([b"k"], wait_s=10.0) == []
    buf.expect([b"j"])
    started = time.monotonic()
    assert buf.lookup([b"j"], wait_s=0.2) == []
    assert time.monotonic() - started < 5.0
    assert buf.lookup([b"unknown"], wait_s=10.0) == []  # never expected: no wait
    buf.close()
