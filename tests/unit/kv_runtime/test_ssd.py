import errno
import logging
import os
import threading

import pytest

from sagellm.core.kv import KVCacheSchema, KVTier
from sagellm.core.kv_backend import KVBackendProtocol, LoadSpec, StoreSpec
from sagellm.kv_runtime import SsdBlockStore, StoreHints, TierEvent, block_file_name
from sagellm.kv_runtime import ssd as ssd_module

from .conftest import SCHEMA, Clock, key, payload

FILE = 318  # 42-byte fixed header + 16-byte hash + 4-byte header crc + 256-byte payload (no lineage)


def open_store(path, capacity=10 * FILE, **kw):
    kw.setdefault("fsync", False)
    return SsdBlockStore(path, SCHEMA, capacity, clock=Clock(), **kw)


def files(path):
    return sorted(os.listdir(path))


def test_round_trip_async_publish_and_stats(tmp_path):
    with open_store(tmp_path) as s:
        assert isinstance(s, KVBackendProtocol)
        plan = s.prepare_store(StoreSpec((key(1), key(2, "ns")), (5, 6), KVTier.SSD), StoreHints(depths=(0, 4)))
        assert plan.locations == (str(tmp_path / block_file_name(key(1))), str(tmp_path / block_file_name(key(2, "ns"))))
        assert plan.locations[0].endswith("01" * 16 + ".kvb")
        s.write(plan, [payload(1), payload(2)])
        s.complete_store(plan)
        assert s.flush(10)
        assert s.contains((key(1), key(2, "ns"), key(3))) == 2
        assert set(s.drain_events()) == {
            TierEvent(key(1), KVTier.SSD, True, plan.locations[0]),
            TierEvent(key(2, "ns"), KVTier.SSD, True, plan.locations[1]),
        }
        got = s.get([key(1), key(2, "ns")])
        assert got.ok and got.payloads == (payload(1), payload(2))
        st = s.stats()[0]
        assert (st.used_blocks, st.stored_blocks, st.loaded_blocks, st.bytes_written, st.bytes_read) == (2, 2, 2, 512, 512)
        assert st.capacity_blocks == 10 * FILE // (FILE - 15)
        assert s.ssd_stats().used_bytes == FILE + FILE + 2  # a namespace adds its 2 utf-8 bytes
        # held keys are skipped
        assert s.put([key(1)], [payload(9)]).skipped == (key(1),)


def test_restart_finds_blocks_and_ignores_other_schemas(tmp_path):
    with open_store(tmp_path) as s:
        s.put([key(1), key(2)], [payload(1), payload(2)], StoreHints(depths=(0, 4)))
        assert s.flush(10)
    with open_store(tmp_path) as again:
        assert set(again.keys()) == {key(1), key(2)}
        assert again.get([key(1), key(2)]).payloads == (payload(1), payload(2))
        assert again.ssd_stats().used_bytes == 2 * FILE
    other = KVCacheSchema(num_layers=2, num_kv_heads=2, head_dim=4, block_size=4, dtype="bfloat16")
    with SsdBlockStore(tmp_path, other, 10 * FILE, fsync=False) as foreign:
        assert foreign.keys() == () and foreign.ssd_stats().ignored_files == 2
    assert len(files(tmp_path)) == 2  # left alone


def _path(tmp_path, k):
    return tmp_path / block_file_name(k)


@pytest.mark.parametrize("damage", ["flip_payload_byte", "flip_header_byte", "truncate", "delete"])
def test_bad_file_fails_load_and_leaves_index(tmp_path, damage, caplog):
    with open_store(tmp_path) as s:
        s.put([key(1), key(2), key(3)], [payload(1), payload(2), payload(3)])
        assert s.flush(10)
        s.drain_events()
        p = _path(tmp_path, key(2))
        data = bytearray(p.read_bytes())
        if damage == "flip_payload_byte":
            data[-1] ^= 0xFF
            p.write_bytes(bytes(data))
        elif damage == "flip_header_byte":
            data[20] ^= 0x01
            p.write_bytes(bytes(data))
        elif damage == "truncate":
            p.write_bytes(bytes(data[:100]))
        else:
            p.unlink()
        plan = s.prepare_load(LoadSpec((key(1), key(2), key(3)), (0, 1, 2), KVTier.SSD))
        assert plan.keys == (key(1), key(2), key(3))
        with caplog.at_level(logging.WARNING, logger="sagellm.kv_runtime.ssd"):
            got = s.read(plan)
        assert got.keys == (key(1),) and got.payloads == (payload(1),) and got.failed == (key(2),)
        report = s.complete_load(plan)
        assert report.loaded == (key(1),) and report.failed == (key(2),)
        assert "failed verification" in caplog.text
        assert not s.has(key(2)) and s.has(key(3)) and not p.exists()
        assert s.drain_events() == (TierEvent(key(2), KVTier.SSD, False),)
        assert s.ssd_stats().corrupt_blocks == 1 and s.ssd_stats().used_bytes == 2 * FILE
        assert s.stats()[0].loaded_blocks == 1
        assert s.contains((key(1), key(2))) == 1


def test_truncated_file_is_dropped_on_open(tmp_path):
    with open_store(tmp_path) as s:
        s.put([key(1), key(2)], [payload(1), payload(2)])
        assert s.flush(10)
    p = _path(tmp_path, key(1))
    p.write_bytes(p.read_bytes()[:-1])
    with open_store(tmp_path) as again:
        assert again.keys() == (key(2),) and again.ssd_stats().corrupt_blocks == 1
    assert not p.exists()


def test_enospc_disables_tier_with_warning(tmp_path, monkeypatch, caplog):
    with open_store(tmp_path) as s:
        s.put([key(1)], [payload(1)])
        assert s.flush(10)

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ssd_module.os, "write", full)
        with caplog.at_level(logging.WARNING, logger="sagellm.kv_runtime.ssd"):
            plan = s.put([key(2)], [payload(2)])  # accepted, fails in the writer thread
            assert plan.keys == (key(2),)
            assert s.flush(10)
        monkeypatch.undo()
        assert "SSD KV tier disabled" in caplog.text and "ENOSPC" in caplog.text
        st = s.ssd_stats()
        assert st.enabled is False and "No space left" in st.disabled_reason and st.failed_writes == 1
        assert not s.has(key(2)) and files(tmp_path) == [block_file_name(key(1))]  # temp file removed
        later = s.put([key(3)], [payload(3)])  # refused, no exception
        assert later.keys == () and later.skipped == (key(3),)
        assert s.get([key(1)]).payloads == (payload(1),)  # what is on disk still serves


def test_unwritable_directory_simulated_disables(tmp_path, monkeypatch, caplog):
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(ssd_module.os, "open", deny)
    with caplog.at_level(logging.WARNING, logger="sagellm.kv_runtime.ssd"):
        s = open_store(tmp_path)
    assert s.enabled is False and "not writable" in s.disabled_reason
    assert "SSD KV tier disabled" in caplog.text
    plan = s.put([key(1)], [payload(1)])
    assert plan.keys == () and plan.skipped == (key(1),)
    s.close()


def test_unwritable_directory_chmod(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as a user that can write a 0o500 directory (root)")
        with open_store(d) as s:
            assert s.enabled is False
            assert s.put([key(1)], [payload(1)]).skipped == (key(1),)
    finally:
        d.chmod(0o700)


def test_uncreatable_directory_disables(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with open_store(blocker / "cache") as s:
        assert s.enabled is False and "cannot create" in s.disabled_reason


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no cleanup handler sees it."""


def test_crash_between_temp_write_and_rename_leaves_nothing_visible(tmp_path, monkeypatch):
    s = open_store(tmp_path)
    s.put([key(1)], [payload(1)])
    assert s.flush(10)

    def crash(src, dst):
        raise Crash()

    monkeypatch.setattr(ssd_module.os, "replace", crash)
    s.put([key(2)], [payload(2)])
    assert s.flush(10)
    monkeypatch.undo()
    names = files(tmp_path)
    assert block_file_name(key(1)) in names and block_file_name(key(2)) not in names
    assert sum(n.startswith(".tmp-") for n in names) == 1  # the half-written block
    assert not s.has(key(2))
    s.close(wait=False)
    with open_store(tmp_path) as again:
        assert again.keys() == (key(1),)
        assert again.ssd_stats().removed_temp_files == 1
    assert files(tmp_path) == [block_file_name(key(1))]


def test_capacity_eviction_by_policy(tmp_path):
    with open_store(tmp_path, capacity=2 * FILE) as s:
        s.put([key(1), key(2)], [payload(1), payload(2)])
        assert s.flush(10)
        assert s.get([key(1)]).ok  # touch 1 -> 2 is least recently used
        plan = s.put([key(3)], [payload(3)])
        assert plan.evicted == (key(2),) and plan.keys == (key(3),)
        assert s.flush(10)
        assert set(s.keys()) == {key(1), key(3)}
        assert not _path(tmp_path, key(2)).exists()
        assert s.stats()[0].evicted_blocks == 1
    # a smaller bound on reopen evicts down to it
    with open_store(tmp_path, capacity=FILE) as small:
        assert len(small.keys()) == 1 and small.ssd_stats().used_bytes == FILE


def test_writes_are_asynchronous_and_bounded(tmp_path, monkeypatch):
    with open_store(tmp_path, max_pending_writes=1, writer_threads=1) as s:
        gate = threading.Event()
        real = s._write_file

        def slow(path, data):
            gate.wait(10)
            real(path, data)

        monkeypatch.setattr(s, "_write_file", slow)
        first = s.put([key(1)], [payload(1)])
        assert first.keys == (key(1),)  # returned while the write is still blocked
        assert s.ssd_stats().pending_writes == 1 and s.keys() == ()  # not published yet
        # ... but readable from the queued copy: a block demoted a moment ago is found again
        assert s.has(key(1)) and s.lineage(key(1)) is None
        assert s.get([key(1)]).payloads == (payload(1),)
        assert not os.path.exists(first.locations[0])
        second = s.put([key(2)], [payload(2)])
        assert second.keys == () and second.skipped == (key(2),)  # queue bound reached
        assert s.flush(0.05) is False
        gate.set()
        assert s.flush(10)
        assert s.keys() == (key(1),) and s.get([key(1)]).payloads == (payload(1),)
        assert s._entries[key(1)].queued_payload is None  # the file serves it now


def test_a_failed_or_cancelled_write_is_not_served(tmp_path, monkeypatch):
    with open_store(tmp_path, writer_threads=1) as s:
        gate = threading.Event()

        def failing(path, data):
            gate.wait(10)
            raise RuntimeError("injected")

        monkeypatch.setattr(s, "_write_file", failing)
        s.put([key(1)], [payload(1)])
        assert s.has(key(1))
        gate.set()
        assert s.flush(10)
        assert not s.has(key(1)) and s.get([key(1)]).keys == ()
        plan = s.prepare_store(StoreSpec((key(2),), (0,), KVTier.SSD))
        gate.clear()
        s.write(plan, [payload(2)])
        s.complete_store(plan, success=False)
        assert not s.has(key(2))
        gate.set()
        assert s.flush(10)


def test_complete_store_contract(tmp_path):
    with open_store(tmp_path) as s:
        plan = s.prepare_store(StoreSpec((key(1),), (0,), KVTier.SSD))
        with pytest.raises(ValueError, match="write"):
            s.complete_store(plan)
        s.complete_store(plan, success=False)
        assert s.ssd_stats().used_bytes == 0
        with pytest.raises(ValueError, match="1 \\(one per key\\)"):
            p2 = s.prepare_store(StoreSpec((key(2),), (0,), KVTier.SSD))
            s.write(p2, [])
        with pytest.raises(ValueError, match="one block"):
            s.write(p2, [b"short"])
        s.complete_store(p2, success=False)
        res = s.evict([key(9)])
        assert res.not_found == (key(9),)
