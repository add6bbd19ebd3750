"""A small parser for unified (git-style) diffs: which files, which hunks, where."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_DIFF_GIT = re.compile(r"^diff --git a/(.+?) b/(.+)$")


@dataclass(frozen=True)
class Hunk:
    number: int  # 1-based within its file
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    header: str  # the "@@ ... @@" text
    patch_line: int  # 1-based line of the header in the patch file


@dataclass(frozen=True)
class FileDiff:
    old_path: str | None  # None for a created file; "a/" stripped
    new_path: str | None  # None for a deleted file; "b/" stripped
    hunks: tuple[Hunk, ...]

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""


@dataclass
class _Section:
    """A file section while it is being parsed."""

    old: str | None
    new: str | None
    from_git_header: bool
    hunks: list[Hunk] = field(default_factory=list)


def _strip(path: str, prefix: str) -> str | None:
    path = path.split("\t", 1)[0].strip()
    if path == "/dev/null":
        return None
    return path[len(prefix) :] if path.startswith(prefix) else path


def parse_diff(text: str) -> tuple[FileDiff, ...]:
    """Every file section and hunk in ``text`` (mail header and diffstat are skipped)."""
    lines = text.splitlines()
    files: list[FileDiff] = []
    current: _Section | None = None

    def close() -> None:
        if current is not None:
            files.append(FileDiff(current.old, current.new, tuple(current.hunks)))

    index = 0
    while index < len(lines):
        line = lines[index]
        git = _DIFF_GIT.match(line)
        if git:
            close()
            current = _Section(git.group(1), git.group(2), True)
        elif line.startswith("--- ") and index + 1 < len(lines) and lines[index + 1].startswith("+++ "):
            if current is None or current.hunks or not current.from_git_header:
                close()
                current = _Section(None, None, False)
            current.old = _strip(line[4:], "a/")
            current.new = _strip(lines[index + 1][4:], "b/")
            index += 1
        elif current is not None and line.startswith("new file mode"):
            current.old = None
        elif current is not None and line.startswith("deleted file mode"):
            current.new = None
        elif current is not None and (hunk := _HUNK.match(line)):
            old_len = int(hunk.group(2)) if hunk.group(2) is not None else 1
            new_len = int(hunk.group(4)) if hunk.group(4) is not None else 1
            header = line[: hunk.end()]
            current.hunks.append(
                Hunk(
                    len(current.hunks) + 1,
                    int(hunk.group(1)),
                    old_len,
                    int(hunk.group(3)),
                    new_len,
                    header,
                    index + 1,
                )
            )
            index = _skip_hunk_body(lines, index + 1, old_len, new_len)
            continue
        index += 1
    close()
    return tuple(files)


def _skip_hunk_body(lines: list[str], index: int, old_len: int, new_len: int) -> int:
    """Index of the first line after a hunk body."""
    while index < len(lines) and (old_len > 0 or new_len > 0 or lines[index].startswith("\\")):
        tag = lines[index][:1]
        if tag in (" ", ""):
            old_len, new_len = old_len - 1, new_len - 1
        elif tag == "-":
            old_len -= 1
        elif tag == "+":
            new_len -= 1
        elif tag != "\\":
            break
        index += 1
    return index


def find_hunk(files: tuple[FileDiff, ...], path: str, old_line: int) -> Hunk | None:
    """The hunk of ``path`` whose preimage starts at ``old_line`` (as ``git apply`` reports it)."""
    for diff in files:
        if path in (diff.old_path, diff.new_path):
            for hunk in diff.hunks:
                if hunk.old_start == old_line or (hunk.old_len == 0 and hunk.old_start + 1 == old_line):
                    return hunk
            return None
    return None


def hunk_by_number(files: tuple[FileDiff, ...], path: str, number: int) -> Hunk | None:
    for diff in files:
        if path in (diff.old_path, diff.new_path) and 0 < number <= len(diff.hunks):
            return diff.hunks[number - 1]
    return None
