"""The ``series`` file: patch file names in application order.

One name per line; blank lines and ``#`` comments are ignored. A missing series
file is an empty series.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.errors import ConfigError

SERIES_FILE = "series"
NUMBERED_PATCH = re.compile(r"^(\d{4})-([A-Za-z0-9._-]+)\.patch$")


@dataclass(frozen=True)
class SeriesEntry:
    name: str
    line: int  # 1-based line in the series file


@dataclass(frozen=True)
class Series:
    folder: Path
    entries: tuple[SeriesEntry, ...]
    exists: bool
    text: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(entry.name for entry in self.entries)

    def path(self, name: str) -> Path:
        return self.folder / name

    def patch_paths(self) -> list[Path]:
        """Every listed patch, in order; raises naming the first listed patch that is missing."""
        paths = [self.path(name) for name in self.names]
        for entry, path in zip(self.entries, paths, strict=True):
            if not path.is_file():
                raise ConfigError(
                    f"{self.folder / SERIES_FILE}:{entry.line} lists {entry.name}, but {path} does not exist; "
                    "add the file or remove the line"
                )
        return paths

    def digest(self) -> str:
        """sha256 over the series text and each listed patch (name and bytes)."""
        digest = hashlib.sha256(self.text.encode())
        for path in self.patch_paths():
            digest.update(f"\0{path.name}\0".encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()


def parse_series(text: str, folder: Path) -> Series:
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if "/" in line or " " in line:
            raise ConfigError(
                f"{folder / SERIES_FILE}:{number}: {line!r} is not a bare patch file name "
                "(one name per line, files live next to the series file)"
            )
        entries.append(SeriesEntry(line, number))
    return Series(folder=folder, entries=tuple(entries), exists=True, text=text)


def read_series(folder: Path) -> Series:
    path = folder / SERIES_FILE
    if not path.is_file():
        return Series(folder=folder, entries=(), exists=False)
    return parse_series(path.read_text(encoding="utf-8"), folder)


def leading_comments(text: str) -> list[str]:
    """The comment block at the top of a series file (kept when the series is regenerated)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        out.append(line)
    return out
