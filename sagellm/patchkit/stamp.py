"""The stamp written next to a generated tree: what it was built from.

``apply`` compares the stamp and the tree's digest with what it would build, and
does nothing when both match.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from sagellm.patchkit.tree import write_text_atomic

STAMP_FORMAT = "1"


@dataclass(frozen=True)
class Stamp:
    package: str
    version: str
    artifact_sha256: str
    series_sha256: str  # digest of the series file and every patch it lists ("" for a pristine tree)
    state: str  # "patched" or "pristine"
    patches: str  # the applied patch names, comma-separated
    keep_native_libs: str  # "0" or "1"
    tree_sha256: str  # digest of the generated tree, to notice hand edits
    format: str = STAMP_FORMAT

    def render(self) -> str:
        lines = ["# Written by sagellm.patchkit; do not edit. Delete it to force a rebuild."]
        lines += [f"{f.name}={getattr(self, f.name)}" for f in fields(self)]
        return "\n".join(lines) + "\n"

    def same_inputs(self, other: Stamp) -> bool:
        """Equal apart from the tree digest."""
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name != "tree_sha256")


def read_stamp(path: Path) -> Stamp | None:
    """The stamp at ``path``; ``None`` when absent or unreadable (a rebuild follows)."""
    if not path.is_file():
        return None
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    try:
        return Stamp(**values)
    except TypeError:
        return None


def write_stamp(path: Path, stamp: Stamp) -> None:
    write_text_atomic(path, stamp.render())
