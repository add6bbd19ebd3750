"""Registered memory: the region a transfer buffer lives in.

``shared=True`` creates a file in ``/dev/shm`` (POSIX shared memory) that other processes on
the host map by name (:meth:`RegisteredMemory.attach`), so a reader copies straight out of the
owner's memory: one copy, no socket. ``shared=False`` is private anonymous memory, read by
peers through a socket or another backend.

Python's ``multiprocessing.shared_memory`` is not used: its resource tracker unlinks a segment
when any attaching process exits.
"""

from __future__ import annotations

import mmap
import os
import secrets
import tempfile
from pathlib import Path

SHM_DIR = Path("/dev/shm")
NAME_PREFIX = "sagellm-kv-"


def _shm_dir() -> Path:
    return SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK) else Path(tempfile.gettempdir())


class RegisteredMemory:
    """``nbytes`` of memory; :attr:`view` is a writable ``memoryview`` of it.

    Attributes:
        name: the shared segment's name (``sagellm-kv-<pid>-<random>``), None when private.
        path: the segment's file, None when private.
    """

    def __init__(self, nbytes: int, *, shared: bool) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"RegisteredMemory.nbytes: got {nbytes!r}; accepted: an integer > 0")
        self.nbytes = nbytes
        self.shared = shared
        self._owner = True
        self.name: str | None = None
        self.path: Path | None = None
        if shared:
            self.name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            self.path = _shm_dir() / self.name
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, nbytes)
                self._map = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
            except BaseException:
                os.unlink(self.path)
                raise
            finally:
                os.close(fd)
        else:
            self._map = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))
        self.view = memoryview(self._map)

    @classmethod
    def attach(cls, name: str, nbytes: int) -> RegisteredMemory:
        """Map another process's shared segment ``name`` (created by it; never unlinked by us)."""
        if not name.startswith(NAME_PREFIX) or "/" in name:
            raise ValueError(f"shared segment name: got {name!r}; accepted: {NAME_PREFIX}<pid>-<hex>")
        path = _shm_dir() / name
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < nbytes:
                raise ValueError(f"shared segment {name}: {size} bytes, the peer announced {nbytes}")
            mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        finally:
            os.close(fd)
        self = cls.__new__(cls)
        self.nbytes, self.shared, self._owner = nbytes, True, False
        self.name, self.path, self._map = name, path, mapping
        self.view = memoryview(mapping)
        return self

    def tensor(self, offset: int = 0, nbytes: int | None = None):
        """A ``torch.uint8`` tensor over ``[offset, offset + nbytes)`` sharing this memory (no copy)."""
        import torch

        length = self.nbytes - offset if nbytes is None else nbytes
        return torch.frombuffer(self.view, dtype=torch.uint8, count=length, offset=offset)

    def close(self) -> None:
        """Unmap; the owner of a shared segment also removes it."""
        if self._map is None:
            return
        try:
            self.view.release()
            self._map.close()
        except BufferError:
            # a tensor still views the memory; the mapping goes with the last view
            pass
        self._map = None
        if self._owner and self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RegisteredMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
