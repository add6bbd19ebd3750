"""Lint the series and every patch header (DEP-3 style, machine-checked).

Errors fail ``lint`` and ``check``; warnings are printed only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.diffparse import parse_diff
from sagellm.patchkit.header import parse_header
from sagellm.patchkit.series import NUMBERED_PATCH, SERIES_FILE, read_series

REQUIRED_FIELDS = ("Why", "Upstream-Status", "Hooks", "Tests")
# Upstream-Status keyword -> whether it needs a "[detail]" (where / why / version)
UPSTREAM_STATUS: dict[str, bool] = {
    "Pending": False,
    "Submitted": True,
    "Accepted": False,
    "Backport": True,
    "Denied": True,
    "Inappropriate": True,
}
_STATUS = re.compile(r"^([A-Za-z-]+)(?:\s*\[(.+)\])?\s*$")
# A hook: a dotted name, optionally "/"-separated sibling members, optionally a "(note)".
_HOOK = re.compile(
    r"^(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?P<siblings>(?:/[A-Za-z_]\w*)*)\s*(?:\((?P<note>.*)\))?$"
)


@dataclass(frozen=True)
class Hook:
    """One ``Hooks:`` entry: ``pkg.mod.Class.method`` or ``pkg.mod.Class.a/b/c`` plus an optional ``(note)``."""

    name: str
    siblings: tuple[str, ...]
    note: str

    @property
    def targets(self) -> tuple[str, ...]:
        """Every dotted name the entry refers to (siblings replace the last component)."""
        parent = self.name.rsplit(".", 1)[0]
        return (self.name, *(f"{parent}.{member}" for member in self.siblings))


def split_top_level(value: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in value:
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        depth += (char == "(") - (char == ")")
        current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def parse_hooks(value: str) -> tuple[list[Hook], list[str]]:
    """(hooks, entries that are not of the form ``dotted.name[/sibling...] [(note)]``)."""
    hooks, bad = [], []
    for entry in split_top_level(value):
        match = _HOOK.match(entry)
        if match:
            siblings = tuple(part for part in match.group("siblings").split("/") if part)
            hooks.append(Hook(match.group("name"), siblings, (match.group("note") or "").strip()))
        else:
            bad.append(entry)
    return hooks, bad


@dataclass(frozen=True)
class LintIssue:
    severity: str  # "error" or "warning"
    where: str  # patch file name, or "series"
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass(frozen=True)
class LintReport:
    folder: Path
    checked: tuple[str, ...]
    issues: tuple[LintIssue, ...]

    @property
    def errors(self) -> tuple[LintIssue, ...]:
        return tuple(issue for issue in self.issues if issue.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        warnings = len(self.issues) - len(self.errors)
        verdict = "ok" if self.ok else "FAILED"
        return f"lint {verdict}: {len(self.checked)} patches, {len(self.errors)} errors, {warnings} warnings"


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def hook_exists(tree_root: Path, dotted: str) -> bool:
    """Whether ``dotted`` names a module in ``tree_root`` and, below it, a def/class/assignment in its source."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        base = tree_root.joinpath(*parts[:split])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.is_file():
            text = source.read_text(encoding="utf-8", errors="replace")
            return all(
                re.search(
                    rf"^\s*(?:async\s+def|def|class)\s+{re.escape(member)}\b|^\s*{re.escape(member)}\s*[:=]", text, re.M
                )
                for member in parts[split:]
            )
    return False


def lint_patch(
    name: str,
    text: str,
    package: str,
    expected_number: str | None = None,
    repo_root: Path | None = None,
    tree: Path | None = None,
) -> list[LintIssue]:
    """Issues in one patch file's header and diff.

    ``tree`` is the directory holding the patched ``<package>/``; when given, every hook
    must name a module and member that exist there (a warning otherwise).
    """
    issues: list[LintIssue] = []

    def error(message: str) -> None:
        issues.append(LintIssue("error", name, message))

    def warning(message: str) -> None:
        issues.append(LintIssue("warning", name, message))

    header = parse_header(text)
    if not header.author:
        warning("no 'From:' author line")
    if not header.subject:
        error("missing 'Subject:' (e.g. 'Subject: [PATCH 0001] device and plugin seam')")
    elif expected_number and header.number and header.number.zfill(4) != expected_number:
        error(f"subject says [PATCH {header.number}] but the file is numbered {expected_number}")
    for field in REQUIRED_FIELDS:
        if not header.get(field):
            error(f"missing '{field}:' line in the message (required: {', '.join(REQUIRED_FIELDS)})")
    status = header.get("Upstream-Status")
    if status:
        match = _STATUS.match(status)
        keyword = match.group(1) if match else ""
        if keyword not in UPSTREAM_STATUS:
            error(f"Upstream-Status {status!r} is not one of {', '.join(UPSTREAM_STATUS)}")
        elif UPSTREAM_STATUS[keyword] and not (match and match.group(2)):
            error(f"Upstream-Status {keyword} needs a detail in brackets, e.g. '{keyword} [where or why]'")
    hooks, bad = parse_hooks(header.get("Hooks"))
    for entry in bad:
        error(f"Hooks entry {entry!r} is not 'module.Class.method' (optionally '.../sibling' and a '(note)')")
    for hook in hooks:
        if hook.name != package and not hook.name.startswith(package + "."):
            warning(f"Hooks entry {hook.name!r} is outside the {package} package")
        if tree is not None:
            for target in hook.targets:
                if not hook_exists(tree, target):
                    warning(f"Hooks entry {target!r} was not found in the patched tree")
    if repo_root is not None:
        for test in _split_list(header.get("Tests")):
            if not (repo_root / test.split("::", 1)[0]).exists():
                warning(f"Tests entry {test!r} does not exist (yet) under {repo_root}")
    files = parse_diff(text)
    if not files:
        error("contains no diff")
    for diff in files:
        if not diff.path.startswith(package + "/"):
            error(f"touches {diff.path!r}, outside {package}/ (paths must be a/{package}/... b/{package}/...)")
        if not diff.hunks and diff.old_path and diff.new_path:
            warning(f"{diff.path}: file section without hunks")
    return issues


def lint_series(folder: Path, package: str, repo_root: Path | None = None, tree: Path | None = None) -> LintReport:
    """Lint ``folder/series`` and the ``*.patch`` files next to it (``tree``: see :func:`lint_patch`)."""
    series = read_series(folder)
    issues: list[LintIssue] = []
    seen: dict[str, int] = {}
    checked: list[str] = []
    for entry in series.entries:
        if entry.name in seen:
            issues.append(
                LintIssue(
                    "error", "series", f"{entry.name} is listed twice (lines {seen[entry.name]} and {entry.line})"
                )
            )
            continue
        seen[entry.name] = entry.line
        position = len(seen)
        numbered = NUMBERED_PATCH.match(entry.name)
        expected = f"{position:04d}"
        if not numbered:
            issues.append(LintIssue("error", "series", f"{entry.name} is not named NNNN-slug.patch"))
        elif numbered.group(1) != expected:
            issues.append(
                LintIssue(
                    "error",
                    "series",
                    f"line {entry.line}: {entry.name} is patch #{position}; numbering must run 0001, 0002, ... "
                    f"without gaps (expected {expected}-...)",
                )
            )
        path = folder / entry.name
        if not path.is_file():
            issues.append(LintIssue("error", "series", f"line {entry.line}: {entry.name} does not exist in {folder}"))
            continue
        checked.append(entry.name)
        text = path.read_text(encoding="utf-8", errors="replace")
        issues += lint_patch(entry.name, text, package, numbered.group(1) if numbered else None, repo_root, tree)
    for path in sorted(folder.glob("*.patch")) if folder.is_dir() else []:
        if path.name not in seen:
            issues.append(
                LintIssue(
                    "error",
                    "series",
                    f"{path.name} is in {folder} but not listed in {SERIES_FILE}; add it or delete it",
                )
            )
    return LintReport(folder=folder, checked=tuple(checked), issues=tuple(issues))
