"""Find or download an upstream wheel, and verify it against its pinned checksum.

Downloads go through ``python -m pip download`` (pip's own cache makes repeats
cheap); a wheel already present in the cache folder is used as is.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.errors import ChecksumError, FetchError, ToolMissingError
from sagellm.patchkit.upstream import UpstreamPin

# Linux x86-64 wheel tags LMDeploy has published under, oldest first. 0.11.x ships
# manylinux2014 wheels; 0.16.0 and later ship manylinux_2_28 only.
PLATFORM_TAGS: tuple[str, ...] = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Artifact:
    """A wheel on disk and its sha256."""

    path: Path
    sha256: str
    downloaded: bool


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str) -> None:
    """Raise :class:`ChecksumError` naming both digests when ``path`` does not hash to ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(str(path), expected, actual)


def find_cached_wheel(folder: Path, package: str, version: str, platforms: tuple[str, ...]) -> Path | None:
    """The best wheel for ``package==version`` already in ``folder`` (platform order = preference)."""
    if not folder.is_dir():
        return None
    candidates = sorted(folder.glob(f"{package}-{version}-*.whl"))
    for tag in platforms:
        for candidate in candidates:
            if tag in candidate.name[: -len(".whl")].split("-")[-1].split("."):
                return candidate
    return candidates[0] if candidates else None


def pip_download(
    package: str,
    version: str,
    dest: Path,
    python_version: str,
    platforms: tuple[str, ...],
    log: Log,
) -> Path:
    """Download ``package==version`` into ``dest``, trying each platform tag in turn."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise ToolMissingError(
            f"pip is not available for {sys.executable}; install it (python3 -m ensurepip --user) "
            f"or place the wheel for {package}=={version} in {dest} by hand"
        )
    dest.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for platform in platforms:
        partial = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
        try:
            command = [
                sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                "--platform", platform, f"{package}=={version}", "-d", str(partial),
            ]  # fmt: skip
            log(f"  pip download {package}=={version} ({platform}) -> {dest}")
            proc = subprocess.run(command, capture_output=True, text=True)
            wheels = sorted(partial.glob("*.whl"))
            if proc.returncode == 0 and wheels:
                target = dest / wheels[0].name
                wheels[0].replace(target)  # same folder tree: an atomic rename
                return target
            errors.append(f"[{platform}] " + (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1])
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    raise FetchError(
        f"could not download {package}=={version} for Python {python_version} "
        f"(tried platform tags {', '.join(platforms)}):\n  " + "\n  ".join(errors) + "\n"
        f"Check network access to PyPI, or place the wheel in {dest} by hand."
    )


def fetch_pinned(pin: UpstreamPin, folder: Path, log: Log) -> Path:
    """The pinned artifact from ``folder``, downloading it there if missing. Not verified here."""
    path = folder / pin.artifact
    if path.is_file():
        return path
    wheel = pin.wheel
    downloaded = pip_download(pin.package, pin.version, folder, wheel.python_version, wheel.platform_tags, log)
    if downloaded.name != pin.artifact:
        raise FetchError(
            f"pip downloaded {downloaded.name} but UPSTREAM pins artifact={pin.artifact}; "
            "fix artifact= in UPSTREAM to the file PyPI serves"
        )
    return downloaded


def fetch_release(
    package: str, version: str, folder: Path, python_version: str, platforms: tuple[str, ...], log: Log
) -> Artifact:
    """Any wheel of ``package==version`` (no pin: its sha256 is computed and returned for the record)."""
    cached = find_cached_wheel(folder, package, version, platforms)
    downloaded = cached is None
    path = cached or pip_download(package, version, folder, python_version, platforms, log)
    return Artifact(path=path, sha256=sha256_file(path), downloaded=downloaded)
