"""File trees: list, hash, compare, copy, and swap into place."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

IGNORED_DIRS = frozenset({"__pycache__"})
IGNORED_SUFFIXES = (".pyc", ".pyo")
HARDLINK_SUFFIXES = (".so",)  # large native files are linked, never edited by patches


def list_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, skipping ``__pycache__`` and compiled bytecode."""
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        for name in names:
            if name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(folder) / name
            files[path.relative_to(root).as_posix()] = path
    return dict(sorted(files.items()))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(root: Path) -> str:
    """One digest over every file's relative path and content."""
    digest = hashlib.sha256()
    for relative, path in list_files(root).items():
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class TreeDiff:
    """How ``actual`` differs from ``expected``."""

    modified: tuple[str, ...] = ()
    added: tuple[str, ...] = ()  # in actual only
    missing: tuple[str, ...] = ()  # in expected only

    @property
    def clean(self) -> bool:
        return not (self.modified or self.added or self.missing)

    @property
    def count(self) -> int:
        return len(self.modified) + len(self.added) + len(self.missing)

    def under(self, folder: str) -> TreeDiff:
        """The same diff with every path prefixed by ``folder/``."""
        return TreeDiff(
            *(tuple(f"{folder}/{path}" for path in group) for group in (self.modified, self.added, self.missing))
        )

    def lines(self, prefix: str = "") -> list[str]:
        out = [f"{prefix}modified: {path}" for path in self.modified]
        out += [f"{prefix}added:    {path}" for path in self.added]
        out += [f"{prefix}missing:  {path}" for path in self.missing]
        return out


def compare_trees(expected: Path, actual: Path) -> TreeDiff:
    want, have = list_files(expected), list_files(actual)
    modified = []
    for relative in sorted(want.keys() & have.keys()):
        a, b = want[relative], have[relative]
        if a.stat().st_size != b.stat().st_size or file_sha256(a) != file_sha256(b):
            modified.append(relative)
    return TreeDiff(
        modified=tuple(modified),
        added=tuple(sorted(have.keys() - want.keys())),
        missing=tuple(sorted(want.keys() - have.keys())),
    )


def copy_tree(source: Path, dest: Path, skip: frozenset[str] = frozenset()) -> None:
    """Copy ``source`` to ``dest`` (new), without bytecode; ``.so`` files are hard-linked when possible."""
    for relative, path in list_files(source).items():
        if relative in skip:
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(HARDLINK_SUFFIXES):
            try:
                os.link(path, target)
                continue
            except OSError:
                pass
        shutil.copy2(path, target)


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def swap_into_place(staged: Path, target: Path, previous: Path) -> bool:
    """Move ``staged`` to ``target``; the old ``target`` (if any) ends up at ``previous``.

    Both renames stay on one filesystem; if the second fails the old tree is put back.
    Returns whether there was an old tree.
    """
    remove_tree(previous)
    had_old = target.exists() or target.is_symlink()
    if had_old:
        target.rename(previous)
    try:
        staged.rename(target)
    except OSError:
        if had_old:
            previous.rename(target)
        raise
    return had_old


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
