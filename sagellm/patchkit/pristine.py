"""The pristine upstream tree: verified, extracted once, reused.

``third_party/.pristine/<package>-<version>/`` holds ``<package>/`` and a manifest
recording the artifact, its sha256, the wheel metadata and the tree digest. The
artifact's checksum is verified before anything is extracted; extraction goes to
a temporary sibling that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sagellm.patchkit.fetch import Log, fetch_pinned, verify_checksum
from sagellm.patchkit.layout import Layout
from sagellm.patchkit.tree import remove_tree, tree_sha256, write_text_atomic
from sagellm.patchkit.upstream import UpstreamPin
from sagellm.patchkit.wheel import WheelMetadata, extract_package, read_metadata

MANIFEST = "pristine.json"


@dataclass(frozen=True)
class Pristine:
    root: Path  # holds <package>/ and the manifest
    package: str
    version: str
    artifact: str
    sha256: str
    keep_native_libs: bool
    tree_sha256: str
    metadata: WheelMetadata

    @property
    def package_dir(self) -> Path:
        return self.root / self.package


def _load(root: Path) -> Pristine | None:
    manifest = root / MANIFEST
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        meta = data.pop("metadata")
        meta["console_scripts"] = tuple(tuple(item) for item in meta["console_scripts"])
        return Pristine(root=root, metadata=WheelMetadata(**meta), **data)
    except (ValueError, KeyError, TypeError):
        return None


def _save(pristine: Pristine) -> None:
    data = asdict(pristine)
    data.pop("root")
    write_text_atomic(pristine.root / MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _usable(found: Pristine | None, pin: UpstreamPin, keep_native_libs: bool) -> bool:
    return (
        found is not None
        and found.sha256 == pin.sha256
        and found.artifact == pin.artifact
        and found.keep_native_libs == keep_native_libs
        and found.package_dir.is_dir()
        and tree_sha256(found.package_dir) == found.tree_sha256
    )


def ensure_pristine(pin: UpstreamPin, layout: Layout, log: Log) -> Pristine:
    """The verified pristine tree for ``pin``, fetching and extracting it when missing or stale."""
    root = layout.pristine_root(pin.package, pin.version)
    found = _load(root)
    if _usable(found, pin, layout.keep_native_libs):
        assert found is not None
        return found
    if found is not None:
        log(f"pristine tree at {root} is stale or was edited; extracting it again")
    wheel = fetch_pinned(pin, layout.release_cache(pin.package, pin.version), log)
    log(f"verifying {wheel.name} (sha256 {pin.sha256[:12]}...)")
    verify_checksum(wheel, pin.sha256)  # before anything is extracted
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.extract-", dir=root.parent))
    try:
        result = extract_package(wheel, pin.package, staging, layout.keep_native_libs)
        pristine = Pristine(
            root=staging,
            package=pin.package,
            version=pin.version,
            artifact=pin.artifact,
            sha256=pin.sha256,
            keep_native_libs=layout.keep_native_libs,
            tree_sha256=tree_sha256(staging / pin.package),
            metadata=read_metadata(wheel),
        )
        _save(pristine)
        remove_tree(root)
        os.replace(staging, root)
    finally:
        remove_tree(staging)
    skipped = (
        f", left out {len(result.skipped)} native libraries (set SAGELLM_KEEP_TURBOMIND=1 to keep them)"
        if result.skipped
        else ""
    )
    log(f"extracted {result.files} files of {pin.package} {pin.version} to {root}{skipped}")
    return replace(pristine, root=root)
