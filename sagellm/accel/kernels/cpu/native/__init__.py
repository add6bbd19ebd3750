"""sagellm's C++ CPU kernels: compiled once per machine with its own compiler, called through ctypes.

The sources in this folder use a plain C ABI (no torch or Python headers), so a build takes about
a second and does not depend on the torch version. The shared library goes to
``<cache>/kernels/<key>/`` where the key hashes the sources, the compiler, the flags and the CPU's
feature flags (``-march=native`` code must not travel to another CPU). A build is written under a
temporary name and renamed into place under a file lock, so concurrent engine processes build once.

Nothing here is required: without a C++ compiler, or when the build or the load fails,
:func:`native_kernels` returns None (the reason is in :func:`native_status`) and callers keep the
pure-torch kernels of :mod:`sagellm.accel.kernels.cpu`. The cpu device's ``cpu_native_kernels``
setting (``SAGELLM_CPU_NATIVE_KERNELS=0``) keeps it from asking at all.

``python -m sagellm.accel.kernels.cpu.native`` builds (``scripts/setup.sh`` runs it) and prints the result.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sagellm.core.paths import cache_root

logger = logging.getLogger(__name__)

SOURCES = ("decode_attention.cpp", "elementwise.cpp")
#: Must equal ``sagellm_cpu_abi_version()`` of the sources.
ABI_VERSION = 2
LIBRARY_NAME = "libsagellm_cpu.so"
# -ffp-contract=off: a product then a sum round twice, like the separate torch ops they replace
BASE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off")
#: Tried in order: the first set the compiler accepts wins.
TARGET_FLAGS = (("-march=native",), ())
ENV_SWITCH = "SAGELLM_CPU_NATIVE_KERNELS"


class NativeBuildError(RuntimeError):
    """The kernels could not be compiled or loaded (the message says why and how to get past it)."""


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernels are in use: ``path`` of the loaded library, or ``reason`` they are not."""

    available: bool
    path: Path | None = None
    reason: str = ""


def source_dir() -> Path:
    return Path(__file__).resolve().parent


def compiler() -> str | None:
    """``$CXX``, else the first of c++ / g++ / clang++ on PATH."""
    explicit = os.environ.get("CXX")
    if explicit:
        return explicit
    return next((found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def build_key(cxx: str) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((source_dir() / name).read_bytes())
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeBuildError(f"C++ compiler {cxx!r} does not run ({exc}); set CXX to a working one "
                               f"or {ENV_SWITCH}=0") from exc
    for part in (version, " ".join(BASE_FLAGS), repr(TARGET_FLAGS), platform.machine(), _cpu_flags(), str(ABI_VERSION)):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def library_path(cxx: str) -> Path:
    return cache_root() / "kernels" / build_key(cxx) / LIBRARY_NAME


def build(force: bool = False) -> Path:
    """Compile the kernels for this machine (once; cached) and return the library's path.

    Raises:
        NativeBuildError: no compiler, or every flag set failed (the compiler's message is included).
    """
    cxx = compiler()
    if cxx is None:
        raise NativeBuildError(f"no C++ compiler found (looked for $CXX, c++, g++, clang++); install one "
                               f"(Debian: apt-get install g++) or set {ENV_SWITCH}=0")
    target = library_path(cxx)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and not force:
            return target  # another process built it while this one waited
        errors = []
        for flags in TARGET_FLAGS:
            fd, staging = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
            os.close(fd)
            command = [cxx, *BASE_FLAGS, *flags, "-o", staging, *(str(source_dir() / name) for name in SOURCES)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as exc:
                done = None
                errors.append(f"{' '.join(command)}: {exc}")
            if done is not None and done.returncode == 0:
                os.replace(staging, target)
                return target
            if done is not None:
                errors.append(f"{' '.join(command)}:\n{done.stderr.strip()[-2000:]}")
            Path(staging).unlink(missing_ok=True)
    raise NativeBuildError("building the native cpu kernels failed; " + f"{ENV_SWITCH}=0 uses the torch kernels.\n"
                           + "\n".join(errors))


class NativeKernels:
    """The loaded library, with its functions' ctypes signatures set."""

    def __init__(self, path: Path) -> None:
        import torch  # noqa: F401  (its OpenMP runtime must be loaded first, so the library binds to it)

        self.path = path
        self._lib = ctypes.CDLL(str(path))
        version = self._lib.sagellm_cpu_abi_version()
        if version != ABI_VERSION:
            raise NativeBuildError(f"{path} has C ABI version {version}, this sagellm needs {ABI_VERSION}; "
                                   "delete it to rebuild")
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        decode = self._lib.sagellm_paged_decode_attention
        decode.argtypes = [ptr] * 7 + [i64] * 13 + [ctypes.c_float, ctypes.c_float, i64, ctypes.c_int, ctypes.c_int]
        decode.restype = ctypes.c_int
        self.paged_decode_attention = decode
        rms = self._lib.sagellm_rms_norm
        rms.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, ptr, i64, i64, i64, ctypes.c_float]
        rms.restype = None
        self.rms_norm = rms
        rotary = self._lib.sagellm_rotary_inplace
        rotary.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, i64]
        rotary.restype = None
        self.rotary_inplace = rotary
        write = self._lib.sagellm_write_rows
        write.argtypes = [ptr, i64, ptr, i64, i64, ptr, i64, i64, i64]
        write.restype = None
        self.write_rows = write


@functools.lru_cache(maxsize=1)
def _load() -> tuple[NativeKernels | None, NativeStatus]:
    try:
        kernels = NativeKernels(build())
    except (NativeBuildError, OSError, AttributeError) as exc:
        logger.warning("native cpu kernels unavailable, using the torch kernels: %s", exc)
        return None, NativeStatus(False, reason=str(exc))
    return kernels, NativeStatus(True, path=kernels.path)


def native_kernels() -> NativeKernels | None:
    """The native kernels of this process, built on first use; None when unavailable (see :func:`native_status`)."""
    return _load()[0]


def native_status() -> NativeStatus:
    return _load()[1]


def reset() -> None:
    """Forget the loaded state (tests)."""
    _load.cache_clear()
