"""A ``torch.cuda``-shaped module for the CPU device.

LMDeploy's engine drives devices through the ``torch.cuda`` API (streams, events, memory
queries). On CPU every op runs synchronously on the calling thread, so streams and events
are trivially complete; memory queries answer from the configured KV budget instead of
any CUDA call.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time

_GIB = 1 << 30


class CpuStream:
    """Work submitted on CPU is complete when the call returns."""

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait_stream(self, stream: "CpuStream") -> None:
        pass

    def wait_event(self, event: "CpuEvent") -> None:
        pass

    def record_event(self, event: "CpuEvent | None" = None) -> "CpuEvent":
        event = event or CpuEvent()
        event.record(self)
        return event


class CpuEvent:
    """Records a wall-clock time so ``elapsed_time`` works like a timing CUDA event."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False):
        self._time: float | None = None

    def record(self, stream: CpuStream | None = None) -> None:
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, stream: CpuStream | None = None) -> None:
        pass

    def elapsed_time(self, end_event: "CpuEvent") -> float:
        if self._time is None or end_event._time is None:
            raise RuntimeError("elapsed_time needs both events to be recorded first")
        return (end_event._time - self._time) * 1000.0


Stream = CpuStream
Event = CpuEvent
_default_stream = CpuStream()
_current_stream = _default_stream


def current_stream(device=None) -> CpuStream:
    return _current_stream


def default_stream(device=None) -> CpuStream:
    return _default_stream


@contextlib.contextmanager
def stream(stream_: CpuStream | None):
    global _current_stream
    previous = _current_stream
    _current_stream = stream_ or _default_stream
    try:
        yield
    finally:
        _current_stream = previous


def synchronize(device=None) -> None:
    pass


def empty_cache() -> None:
    pass


def is_available() -> bool:
    return True


def device_count() -> int:
    return 1


def current_device() -> int:
    return 0


def set_device(device) -> None:
    if int(getattr(device, "index", device) or 0) != 0:
        raise ValueError(f"the cpu device has a single index 0, got {device!r}")


def get_device_name(device=None) -> str:
    return platform.processor() or platform.machine() or "cpu"


def _available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable), falling back to total."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget() -> int | None:
    """An explicit budget in bytes from ``SAGELLM_CPU_MEMORY_GIB``, or None."""
    value = os.environ.get("SAGELLM_CPU_MEMORY_GIB")
    if value is None or value == "":
        return None
    try:
        gib = float(value)
    except ValueError:
        raise ValueError(f"SAGELLM_CPU_MEMORY_GIB must be a number of GiB, got {value!r}") from None
    if gib <= 0:
        raise ValueError(f"SAGELLM_CPU_MEMORY_GIB must be > 0, got {value!r}")
    return int(gib * _GIB)


def mem_get_info(device=None) -> tuple[int, int]:
    """(free, total) bytes the engine may size its KV cache from.

    LMDeploy multiplies ``free`` by ``cache_max_entry_count``; with SAGELLM_CPU_MEMORY_GIB set,
    ``free`` is that budget (capped by what is actually available), otherwise available RAM.
    """
    available = _available_ram()
    budget = memory_budget()
    free = available if budget is None else min(budget, available)
    return free, _total_ram()

