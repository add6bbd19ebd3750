"""Apply one patch to a tree with ``git apply``; on failure, name the patch, file and hunk."""

from __future__ import annotations

import re
from pathlib import Path

from sagellm.patchkit.diffparse import FileDiff, find_hunk, hunk_by_number, parse_diff
from sagellm.patchkit.errors import HunkFailure, PatchApplyError
from sagellm.patchkit.tools import git, gnu_patch, have

FIX_HINT = (
    "The previous tree was left untouched. To repair the patch, open a workspace "
    "(python3 -m sagellm.patchkit workspace DIR), fix the commit there and export it again; see patches/README.md."
)

_GIT_PATCH_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$")
_GIT_FILE_ERROR = re.compile(
    r"^error: (.+?): (already exists in working directory|No such file or directory"
    r"|does not exist in index|patch does not apply)$"
)
_GIT_CORRUPT = re.compile(r"^(?:error|fatal): corrupt patch at line (\d+)$")
_PATCH_FILE = re.compile(r"^(?:checking|patching) file '?(.+?)'?$")
_PATCH_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_PATCH_MISSING_NAME = re.compile(r"^\|(?:diff --git a/(\S+) b/|--- a/(\S+))")


def apply_patch(tree_root: Path, patch: Path) -> None:
    """Apply ``patch`` (paths ``a/<package>/...``) inside ``tree_root``; all hunks or none.

    ``tree_root`` must not be inside a git repository's index view: git is kept from
    looking above ``tree_root`` so it behaves like ``patch -p1``.
    """
    proc = git(
        ["apply", "--verbose", "--whitespace=nowarn", "-p1", str(patch.resolve())],
        cwd=tree_root,
        check=False,
        ceiling=tree_root.parent,
    )
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip()
        raise PatchApplyError(patch.name, diagnose(tree_root, patch, output), output, FIX_HINT)


def diagnose(tree_root: Path, patch: Path, git_output: str) -> tuple[HunkFailure, ...]:
    """Every failing hunk we can name: from GNU patch (all hunks) when installed, else from git (the first)."""
    text = patch.read_text(encoding="utf-8", errors="replace")
    files = parse_diff(text)
    from_git = _from_git(git_output, files)
    if any(f.reason.startswith("corrupt") for f in from_git):
        return from_git
    from_patch = _from_gnu_patch(tree_root, patch, files) if have("patch") else ()
    return from_patch or from_git


def failures_from_git_output(output: str, patch_text: str) -> tuple[HunkFailure, ...]:
    """Failing hunks named in ``git apply``/``git am`` output (git stops at the first)."""
    return _from_git(output, parse_diff(patch_text))


def _from_git(output: str, files: tuple[FileDiff, ...]) -> tuple[HunkFailure, ...]:
    failures: list[HunkFailure] = []
    for line in output.splitlines():
        if match := _GIT_PATCH_FAILED.match(line):
            path, number = match.group(1), int(match.group(2))
            hunk = find_hunk(files, path, number)
            failures.append(
                HunkFailure(
                    path, hunk.number if hunk else None, number, hunk.header if hunk else "", "context does not match"
                )
            )
        elif (match := _GIT_FILE_ERROR.match(line)) and match.group(2) != "patch does not apply":
            failures.append(HunkFailure(match.group(1), None, None, "", match.group(2)))
        elif match := _GIT_CORRUPT.match(line):
            failures.append(
                HunkFailure(
                    "(patch file)", None, int(match.group(1)), "", f"corrupt patch at patch line {match.group(1)}"
                )
            )
    return tuple(failures)


def _from_gnu_patch(tree_root: Path, patch: Path, files: tuple[FileDiff, ...]) -> tuple[HunkFailure, ...]:
    proc = gnu_patch(["-p1", "--dry-run", "--forward", "--fuzz=0", "-i", str(patch.resolve())], cwd=tree_root)
    failures: list[HunkFailure] = []
    current = ""
    missing = False
    for line in (proc.stdout + proc.stderr).splitlines():
        if missing and (match := _PATCH_MISSING_NAME.match(line)):
            missing = False
            failures.append(
                HunkFailure(match.group(1) or match.group(2), None, None, "", "file to patch does not exist")
            )
        elif line.startswith("can't find file to patch"):
            missing = True
        elif match := _PATCH_FILE.match(line):
            current = match.group(1)
        elif match := _PATCH_FAILED.match(line):
            number, at = int(match.group(1)), int(match.group(2))
            hunk = hunk_by_number(files, current, number)
            failures.append(HunkFailure(current, number, at, hunk.header if hunk else "", "context does not match"))
        elif "Reversed (or previously applied) patch detected" in line:
            failures.append(HunkFailure(current, None, None, "", "already applied (reversed patch detected)"))
        elif "already exists" in line and "create the file" in line:
            failures.append(HunkFailure(current, None, None, "", "file to create already exists"))
    return tuple(failures)
