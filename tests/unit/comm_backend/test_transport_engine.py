"""TransportEngine over real sockets and shared memory: exact bytes, re-sends, give-up, dead peers."""

from __future__ import annotations

import multiprocessing
import os
import random

import pytest
from prometheus_client import CollectorRegistry

from sagellm.comm_backend import (
    TRANSPORTS,
    ChecksumMismatch,
    KVTransportConfig,
    TransferBuffer,
    TransferError,
    TransportEngine,
    TransportServer,
    backend_status,
)
from sagellm.comm_backend.backends.shm import ShmBackend
from sagellm.comm_backend.backends.tcp import TcpBackend
from sagellm.telemetry.metrics import SageMetrics

CHUNK = 64 << 10


def payloads():
    rng = random.Random(5)
    return {bytes([i]) * 16: rng.randbytes(size) for i, size in enumerate((1, CHUNK, 3 * CHUNK + 17, 300_000))}


@pytest.fixture
def served():
    buf = TransferBuffer(512 << 10, 8, chunk_bytes=CHUNK, shared=True)
    data = payloads()
    for key, payload in data.items():
        buf.put(key, b"meta-" + key[:1], payload)
    server = TransportServer(buf, info={"schema": "test"}).start()
    yield server, data
    server.close()
    buf.close()


def engine(backend: str, registry=None, **kwargs) -> TransportEngine:
    return TransportEngine(KVTransportConfig(backend=backend), metrics=SageMetrics(registry or CollectorRegistry()), **kwargs)


def read_all(link, keys):
    objects = link.lookup(keys)
    dests = [bytearray(o.nbytes) for o in objects]
    stats = link.read(objects, [memoryview(d) for d in dests])
    link.release([o.key for o in objects])
    return objects, [bytes(d) for d in dests], stats


@pytest.mark.parametrize("backend", ["shm", "tcp", "torch_dist"])
def test_read_delivers_exact_bytes(served, backend):
    server, data = served
    with engine(backend).connect(server.address) as link:
        assert link.info == {"schema": "test"}
        objects, got, stats = read_all(link, list(data) + [b"missing"])
    assert got == list(data.values())
    assert [o.meta for o in objects] == [b"meta-" + k[:1] for k in data]
    assert stats.backend == backend and stats.objects == 4
    assert stats.nbytes == sum(map(len, data.values()))
    assert stats.chunks == 1 + 1 + 4 + 5 and stats.resent_chunks == 0


def test_metrics_record_bytes_and_latency(served):
    server, data = served
    registry = CollectorRegistry()
    with engine("tcp", registry).connect(server.address) as link:
        read_all(link, list(data))
    assert registry.get_sample_value("sagellm_transport_bytes_total", {"backend": "tcp"}) == sum(map(len, data.values()))
    assert registry.get_sample_value("sagellm_transport_latency_seconds_count", {"backend": "tcp"}) == 1


def test_tcp_chunk_corrupted_in_flight_is_sent_again(served, monkeypatch):
    server, data = served
    sent = {"n": 0}
    original = TcpBackend.send_chunk

    def corrupt_second_chunk(sock, view):
        sent["n"] += 1
        if sent["n"] == 2:
            bad = bytearray(view)
            bad[0] ^= 0xFF
            view = memoryview(bytes(bad))
        original(sock, view)

    monkeypatch.setattr(TcpBackend, "send_chunk", staticmethod(corrupt_second_chunk))
    registry = CollectorRegistry()
    with engine("tcp", registry).connect(server.address) as link:
        _, got, stats = read_all(link, list(data))
    assert got == list(data.values())
    assert stats.resent_chunks == 1
    assert registry.get_sample_value("sagellm_transport_resent_chunks_total", {"backend": "tcp", "outcome": "recovered"}) == 1


def test_shm_torn_copy_is_read_again(served, monkeypatch):
    server, data = served
    original = ShmBackend._copy
    calls = {"n": 0}

    def torn(self, task):
        calls["n"] += 1
        first = calls["n"] == 1  # stripes copy on several threads: decide before copying
        original(self, task)
        if first:
            task.dest[0] ^= 0x01
        return task

    monkeypatch.setattr(ShmBackend, "_copy", torn)
    with engine("shm").connect(server.address) as link:
        _, got, stats = read_all(link, list(data))
    assert got == list(data.values()) and stats.resent_chunks == 1


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_corruption_at_rest_gives_up_with_a_clear_error(served, backend):
    server, data = served
    key = list(data)[2]
    obj = server.buffer.lookup([key])[0]
    server.buffer.release([key])
    server.buffer.memory.view[obj.offset + CHUNK + 5] ^= 0x55  # chunk 1 of that object
    registry = CollectorRegistry()
    with engine(backend, registry, max_retries=2).connect(server.address) as link:
        objects = link.lookup([key])
        with pytest.raises(ChecksumMismatch, match=r"1 chunk\(s\) still failed their checksum after 2 re-send\(s\) \(first: object 0 chunk 1\)"):
            link.read(objects, [memoryview(bytearray(objects[0].nbytes))])
    assert registry.get_sample_value("sagellm_transport_resent_chunks_total", {"backend": backend, "outcome": "failed"}) == 2


def test_dead_peer_raises_transfer_error_not_a_hang(served):
    server, data = served
    link = engine("tcp", io_timeout_s=5.0).connect(server.address)
    objects = link.lookup(list(data))
    server.close()
    with pytest.raises(TransferError):
        link.read(objects, [memoryview(bytearray(o.nbytes)) for o in objects])
    with pytest.raises(TransferError, match="cannot connect"):
        engine("tcp", connect_timeout_s=2.0).connect(server.address)


def test_destination_of_the_wrong_size_is_refused(served):
    server, data = served
    with engine("tcp").connect(server.address) as link:
        objects = link.lookup(list(data)[:1])
        with pytest.raises(ValueError, match="writable buffer of 1 bytes, got 2"):
            link.read(objects, [memoryview(bytearray(2))])


def test_backend_not_served_is_refused_with_the_served_names():
    buf = TransferBuffer(16, 1, chunk_bytes=16, shared=False)
    with TransportServer(buf, backends=("tcp",)) as server:
        with pytest.raises(TransferError, match="backend 'shm' is not served here; served: tcp"):
            engine("shm").connect(server.address)
    buf.close()


def test_shm_needs_a_shared_buffer():
    buf = TransferBuffer(16, 1, chunk_bytes=16, shared=False)
    with TransportServer(buf) as server:
        with pytest.raises(TransferError, match="not in shared memory; use backend tcp"):
            engine("shm").connect(server.address)
    buf.close()


def test_registry_lists_every_backend_and_reports_missing_packages():
    assert list(TRANSPORTS.names()) == ["dlslime", "mooncake", "shm", "tcp", "torch_dist"]
    status = backend_status()
    assert status["shm"] is None and status["tcp"] is None
    with pytest.raises(ValueError, match="valid names|registered"):
        TRANSPORTS.get("rdma")


@pytest.mark.parametrize("backend,module", [("mooncake", "mooncake.engine"), ("dlslime", "dlslime")])
def test_vendor_backends_when_installed(served, backend, module):
    pytest.importorskip(module)
    server, data = served
    with engine(backend).connect(server.address) as link:
        _, got, _ = read_all(link, list(data))
    assert got == list(data.values())


def _serve_in_child(queue, stop):
    buf = TransferBuffer(1 << 20, 2, chunk_bytes=CHUNK, shared=True)
    buf.put(b"k" * 16, b"tokens", bytes(range(256)) * 1000)
    server = TransportServer(buf).start()
    queue.put(server.address)
    stop.wait(60)
    server.close()
    buf.close()


@pytest.mark.parametrize("backend", ["shm", "tcp"])
def test_read_from_another_process(backend):
    ctx = multiprocessing.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve_in_child, args=(queue, stop), daemon=True)
    child.start()
    try:
        address = queue.get(timeout=60)
        with engine(backend).connect(address) as link:
            objects, got, _ = read_all(link, [b"k" * 16])
        assert got == [bytes(range(256)) * 1000] and objects[0].meta == b"tokens"
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()
    assert not os.path.exists(f"/proc/{child.pid}")  # the child and its memory file are gone


def test_release_is_one_way_but_unpins_in_order():
    buf = TransferBuffer(16, 1, chunk_bytes=16, shared=False, lease_s=60)
    buf.put(b"a", b"", b"a" * 16)
    with TransportServer(buf) as server, engine("tcp").connect(server.address) as link:
        link.lookup([b"a"])
        assert buf.put(b"b", b"", b"b" * 16) is None  # pinned by the link
        link.release([b"a"])
        assert link.lookup([b"zz"]) == []  # a round trip after the release: the server has processed it
        assert buf.put(b"b", b"", b"b" * 16) is not None
    buf.close()
