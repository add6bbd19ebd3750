"""Where everything lives: repo root, pin file, series folder, download cache.

Every path is injectable so tests (and other checkouts) can point the kit at a
temporary directory; :meth:`Layout.default` derives the real ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.upstream import UpstreamPin

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # sagellm/patchkit/ -> repository root
ENV_CACHE_DIR = "SAGELLM_CACHE_DIR"
ENV_KEEP_TURBOMIND = "SAGELLM_KEEP_TURBOMIND"
PATCHKIT_DIRNAME = ".patchkit"  # state kept next to the generated tree (stamp, lock, staging, backup)


def default_cache_dir() -> Path:
    base = os.environ.get(ENV_CACHE_DIR) or str(Path.home() / ".cache" / "sagellm")
    return Path(base) / "upstream"


def keep_native_libs_from_env() -> bool:
    value = os.environ.get(ENV_KEEP_TURBOMIND, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{ENV_KEEP_TURBOMIND}={value!r} is not a boolean; use 1 or 0")


@dataclass(frozen=True)
class Layout:
    """Paths the kit reads and writes.

    ``third_party/<package>/<package>/`` is the patched tree; the pristine copy
    lives in ``third_party/.pristine/<package>-<version>/<package>/``.
    """

    repo_root: Path
    upstream_file: Path
    series_dir: Path
    cache_dir: Path
    third_party_dir: Path
    keep_native_libs: bool = False

    @classmethod
    def default(
        cls,
        repo_root: Path | None = None,
        upstream_file: Path | None = None,
        cache_dir: Path | None = None,
        package: str = "lmdeploy",
    ) -> Layout:
        root = (repo_root or PACKAGE_ROOT).resolve()
        series_dir = (upstream_file.parent if upstream_file else root / "patches" / package).resolve()
        return cls(
            repo_root=root,
            upstream_file=(upstream_file or series_dir / "UPSTREAM").resolve(),
            series_dir=series_dir,
            cache_dir=(cache_dir or default_cache_dir()).resolve(),
            third_party_dir=root / "third_party",
            keep_native_libs=keep_native_libs_from_env(),
        )

    @property
    def series_file(self) -> Path:
        return self.series_dir / "series"

    def project_dir(self, pin: UpstreamPin) -> Path:
        """``third_party/lmdeploy``: holds the tree, the generated pyproject and our README."""
        return self.third_party_dir / pin.package

    def tree_dir(self, pin: UpstreamPin) -> Path:
        """``third_party/lmdeploy/lmdeploy``: the patched package users import."""
        return self.project_dir(pin) / pin.package

    def state_dir(self, pin: UpstreamPin) -> Path:
        return self.project_dir(pin) / PATCHKIT_DIRNAME

    def pristine_root(self, package: str, version: str) -> Path:
        return self.third_party_dir / ".pristine" / f"{package}-{version}"

    def release_cache(self, package: str, version: str) -> Path:
        return self.cache_dir / f"{package}-{version}"

    @property
    def compat_file(self) -> Path:
        return self.series_dir.parent / "COMPATIBILITY.md"

    def rebased_dir(self, package: str, version: str) -> Path:
        return self.series_dir.parent / "rebased" / f"{package}-{version}"
