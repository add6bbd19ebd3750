"""Registered memory: the region a transfer buffer lives in.

``shared=True`` creates memory other processes on the host can map: an anonymous memory file
(``memfd_create``) that peers open as ``/proc/<owner pid>/fd/<fd>`` (:meth:`RegisteredMemory.attach`),
so a reader copies straight out of the owner's memory: one copy, no socket. The file has no
name in any filesystem, so it disappears with the last process that maps it -- nothing leaks
when an engine is killed. Where ``memfd_create`` is missing, a file in ``/dev/shm`` is used
instead (removed by :meth:`close` and at interpreter exit). ``shared=False`` is private
anonymous memory, read by peers through a socket or another backend.

Pages are not pre-faulted: the owner's pages are allocated as objects are written, a reader's
on first touch. Python's ``multiprocessing.shared_memory`` is not used: its resource tracker
unlinks a segment when any attaching process exits.
"""

from __future__ import annotations

import atexit
import mmap
import os
import re
import secrets
import tempfile
from pathlib import Path

SHM_DIR = Path("/dev/shm")
NAME_PREFIX = "sagellm-kv-"
_PROC_FD = re.compile(r"^/proc/\d+/fd/\d+$")
_SHM_NAME = re.compile(r"^sagellm-kv-\d+-[0-9a-f]+$")


def _shm_dir() -> Path:
    return SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK) else Path(tempfile.gettempdir())


class RegisteredMemory:
    """``nbytes`` of memory; :attr:`view` is a writable ``memoryview`` of it.

    Attributes:
        name: what a peer passes to :meth:`attach` (``/proc/<pid>/fd/<fd>`` or a ``/dev/shm``
            file name), None when private.
    """

    def __init__(self, nbytes: int, *, shared: bool) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"RegisteredMemory.nbytes: got {nbytes!r}; accepted: an integer > 0")
        self.nbytes = nbytes
        self.shared = shared
        self._owner = True
        self._fd: int | None = None
        self._file: Path | None = None
        self.name: str | None = None
        if not shared:
            self._map = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        elif hasattr(os, "memfd_create"):
            self._fd = os.memfd_create(f"{NAME_PREFIX}{os.getpid()}", getattr(os, "MFD_CLOEXEC", 0))
            os.ftruncate(self._fd, nbytes)
            self._map = mmap.mmap(self._fd, nbytes, flags=mmap.MAP_SHARED)
            self.name = f"/proc/{os.getpid()}/fd/{self._fd}"
        else:
            self.name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            self._file = _shm_dir() / self.name
            fd = os.open(self._file, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, nbytes)
                self._map = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
            except BaseException:
                os.unlink(self._file)
                raise
            finally:
                os.close(fd)
            atexit.register(self.close)
        self.view = memoryview(self._map)

    @classmethod
    def attach(cls, name: str, nbytes: int) -> RegisteredMemory:
        """Map another process's shared memory ``name`` (never removed by us)."""
        if _PROC_FD.match(name):
            path = Path(name)
        elif _SHM_NAME.match(name):
            path = _shm_dir() / name
        else:
            raise ValueError(f"shared memory name: got {name!r}; accepted: /proc/<pid>/fd/<fd> or {NAME_PREFIX}<pid>-<hex>")
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size < nbytes:
                raise ValueError(f"shared memory {name}: {size} bytes, the peer announced {nbytes}")
            mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self = cls.__new__(cls)
        self.nbytes, self.shared, self._owner = nbytes, True, False
        self._fd, self._file, self.name, self._map = None, None, name, mapping
        self.view = memoryview(mapping)
        return self

    def tensor(self, offset: int = 0, nbytes: int | None = None):
        """A ``torch.uint8`` tensor over ``[offset, offset + nbytes)`` sharing this memory (no copy)."""
        import torch

        length = self.nbytes - offset if nbytes is None else nbytes
        return torch.frombuffer(self.view, dtype=torch.uint8, count=length, offset=offset)

    def close(self) -> None:
        """Unmap; the owner also closes the memory file (or removes the ``/dev/shm`` file)."""
        if self._map is None:
            return
        try:
            self.view.release()
            self._map.close()
        except BufferError:
            # a tensor still views the memory; the mapping goes with the last view
            pass
        self._map = None
        if self._owner and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._owner and self._file is not None:
            try:
                os.unlink(self._file)
            except FileNotFoundError:
                pass

    def __enter__(self) -> RegisteredMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
