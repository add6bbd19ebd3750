"""Build pristine + series into a fresh directory (never in place)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.applier import apply_patch
from sagellm.patchkit.pristine import Pristine
from sagellm.patchkit.tree import copy_tree


@dataclass(frozen=True)
class BuiltTree:
    root: Path  # holds <package>/
    package_dir: Path
    applied: tuple[str, ...]


def build_tree(pristine: Pristine, patches: Sequence[Path], root: Path) -> BuiltTree:
    """Copy the pristine package to ``root/<package>`` and apply ``patches`` in order.

    Raises :class:`~sagellm.patchkit.errors.PatchApplyError` at the first patch that does
    not apply; ``root`` is then half-built and the caller discards it.
    """
    package_dir = root / pristine.package
    copy_tree(pristine.package_dir, package_dir)
    applied: list[str] = []
    for patch in patches:
        apply_patch(root, patch)
        applied.append(patch.name)
    return BuiltTree(root=root, package_dir=package_dir, applied=tuple(applied))
