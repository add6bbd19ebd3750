"""Carry the series to another upstream release and report, patch by patch, how it went.

For each patch, in order, on the new release's tree (plus the patches already carried):

* ``clean``    - GNU patch applies it exactly;
* ``fuzz``     - it applies with line offsets and/or fuzz (the amounts are reported);
* ``3way``     - it applies only as a 3-way merge (``git apply -3``) against the pinned
                 tree's blobs, which the new repository reaches through git alternates;
* ``conflict`` - none of those work; the files and hunks are named, the patch is left
                 out and later patches are tried without it.

The carried series is exported to a separate folder (default
``patches/rebased/<package>-<version>/``); the pinned series is never touched.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.errors import UsageError
from sagellm.patchkit.fetch import PLATFORM_TAGS, Artifact, Log, fetch_release
from sagellm.patchkit.layout import Layout
from sagellm.patchkit.series import read_series
from sagellm.patchkit.tools import git, gnu_patch, require
from sagellm.patchkit.tree import write_text_atomic
from sagellm.patchkit.upstream import UpstreamPin, read_upstream
from sagellm.patchkit.wheel import extract_package
from sagellm.patchkit.workspace import create_workspace, export_series, init_upstream_repo

STATUSES = ("clean", "fuzz", "3way", "conflict")
_FILE = re.compile(r"^(?:checking|patching) file '?(.+?)'?$")
_SUCCEEDED = re.compile(r"^Hunk #(\d+) succeeded at (\d+)(?: with fuzz (\d+))?(?: \(offset (-?\d+) lines?\))?\.")
_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_MISSING_NAME = re.compile(r"^\|(?:diff --git a/(\S+) b/|--- a/(\S+))")


@dataclass(frozen=True)
class HunkNote:
    file: str
    hunk: int | None
    detail: str  # "offset +12 lines", "fuzz 1, offset -3 lines", "FAILED at 60", "file missing", ...

    def __str__(self) -> str:
        where = f"{self.file} hunk #{self.hunk}" if self.hunk is not None else self.file
        return f"{where}: {self.detail}"


@dataclass(frozen=True)
class PatchOutcome:
    name: str
    status: str  # one of STATUSES
    notes: tuple[HunkNote, ...] = ()
    conflict_files: tuple[str, ...] = ()
    max_offset: int = 0
    max_fuzz: int = 0

    @property
    def summary(self) -> str:
        """Short form for a table cell."""
        if self.status == "fuzz":
            parts = []
            if self.max_offset:
                parts.append(f"offset {self.max_offset}")
            if self.max_fuzz:
                parts.append(f"fuzz {self.max_fuzz}")
            return f"fuzz ({', '.join(parts)})" if parts else "fuzz"
        if self.status == "conflict":
            files = self.conflict_files or tuple(sorted({note.file for note in self.notes}))
            return f"conflict ({', '.join(files)})" if files else "conflict"
        return self.status

    @property
    def cell(self) -> str:
        """Shorter form for a compatibility table cell (conflicting files are counted, not named)."""
        if self.status == "conflict":
            files = set(self.conflict_files) or {note.file for note in self.notes}
            hunks = sum(1 for note in self.notes if note.hunk is not None)
            parts = [f"{len(files)} file{'s' if len(files) != 1 else ''}"]
            if hunks:
                parts.append(f"{hunks} hunk{'s' if hunks != 1 else ''}")
            return f"conflict ({', '.join(parts)})"
        return self.summary


@dataclass(frozen=True)
class RebaseResult:
    package: str
    version: str
    artifact: Artifact
    outcomes: tuple[PatchOutcome, ...]
    out_dir: Path
    carried: tuple[str, ...]  # patches in the rebased series

    @property
    def conflicts(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if o.status == "conflict")


def parse_patch_output(output: str) -> tuple[list[HunkNote], list[HunkNote], int, int]:
    """GNU patch output -> (fuzzy or offset hunks, failed hunks, max |offset|, max fuzz)."""
    moved: list[HunkNote] = []
    failed: list[HunkNote] = []
    max_offset = max_fuzz = 0
    current = ""
    missing = False
    for line in output.splitlines():
        if missing and (match := _MISSING_NAME.match(line)):
            missing = False
            failed.append(HunkNote(match.group(1) or match.group(2), None, "file does not exist in this release"))
        elif line.startswith("can't find file to patch"):
            missing = True
        elif match := _FILE.match(line):
            current = match.group(1)
        elif match := _SUCCEEDED.match(line):
            fuzz = int(match.group(3) or 0)
            offset = int(match.group(4) or 0)
            details = []
            if fuzz:
                details.append(f"fuzz {fuzz}")
            if offset:
                details.append(f"offset {offset:+d} lines")
            if details:
                moved.append(HunkNote(current, int(match.group(1)), ", ".join(details)))
            max_offset, max_fuzz = max(max_offset, abs(offset)), max(max_fuzz, fuzz)
        elif match := _FAILED.match(line):
            failed.append(HunkNote(current, int(match.group(1)), f"FAILED at line {match.group(2)}"))
        elif "Reversed (or previously applied) patch detected" in line:
            failed.append(HunkNote(current, None, "looks already applied in this release (reversed patch detected)"))
        elif "which already exists" in line:
            failed.append(HunkNote(current, None, "file to create already exists in this release"))
    return moved, failed, max_offset, max_fuzz


def _try_patch(repo: Path, patch: Path) -> tuple[bool, list[HunkNote], list[HunkNote], int, int]:
    dry = gnu_patch(["-p1", "--forward", "--dry-run", "-i", str(patch)], cwd=repo)
    moved, failed, max_offset, max_fuzz = parse_patch_output(dry.stdout + dry.stderr)
    return dry.returncode == 0, moved, failed, max_offset, max_fuzz


def _carry_one(repo: Path, commit: str, name: str, patch: Path) -> PatchOutcome:
    applies, moved, failed, max_offset, max_fuzz = _try_patch(repo, patch)
    if applies:
        proc = gnu_patch(["-p1", "--forward", "-i", str(patch)], cwd=repo)
        if proc.returncode == 0:
            git(["add", "-A"], cwd=repo)
            git(["commit", "-q", "--no-verify", "--allow-empty", "-C", commit], cwd=repo)
            status = "fuzz" if moved else "clean"
            return PatchOutcome(name, status, tuple(moved), (), max_offset, max_fuzz)
        git(["reset", "-q", "--hard", "HEAD"], cwd=repo)
        git(["clean", "-q", "-fd"], cwd=repo)
    three_way = git(["apply", "-3", "--index", "--whitespace=nowarn", str(patch)], cwd=repo, check=False)
    unmerged = git(["diff", "--name-only", "--diff-filter=U"], cwd=repo).stdout.split()
    if three_way.returncode == 0 and not unmerged:
        git(["commit", "-q", "--no-verify", "-C", commit], cwd=repo)
        return PatchOutcome(name, "3way")
    conflict_files = tuple(sorted(set(unmerged) | {note.file for note in failed}))
    git(["reset", "-q", "--hard", "HEAD"], cwd=repo)
    git(["clean", "-q", "-fd"], cwd=repo)
    notes = tuple(failed) or tuple(HunkNote(f, None, "3-way merge conflict") for f in unmerged)
    return PatchOutcome(name, "conflict", notes, conflict_files)


def _default_out(layout: Layout, pin: UpstreamPin, version: str) -> Path:
    out = layout.rebased_dir(pin.package, version)
    ignore = out.parent / ".gitignore"
    if not ignore.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        ignore.write_text("# Output of `sagellm.patchkit rebase`; not committed.\n*\n", encoding="utf-8")
    return out


def rebase(
    layout: Layout,
    version: str,
    out_dir: Path | None = None,
    log: Log = print,
    keep_work: bool = False,
) -> RebaseResult:
    """Carry the pinned series to ``version`` and write the result to ``out_dir``."""
    require("patch")
    pin = read_upstream(layout.upstream_file)
    series = read_series(layout.series_dir)
    out = (out_dir or _default_out(layout, pin, version)).resolve()
    if out == layout.series_dir.resolve():
        raise UsageError(f"--out {out} is the pinned series folder; rebase never writes there, pick another folder")
    work = Path(tempfile.mkdtemp(prefix=f"patchkit-rebase-{version}-"))
    try:
        quiet: Log = lambda _message: None  # noqa: E731
        old = create_workspace(layout, work / "old", quiet)
        platforms = tuple(dict.fromkeys((*pin.wheel.platform_tags, *PLATFORM_TAGS)))
        artifact = fetch_release(
            pin.package, version, layout.release_cache(pin.package, version), pin.wheel.python_version, platforms, log
        )
        extracted = work / "extract"
        extract_package(artifact.path, pin.package, extracted, keep_native_libs=False)
        new = work / "new"
        tag = init_upstream_repo(
            new, extracted / pin.package, pin.package, version,
            f"{pin.package} {version} (pristine)\n\nFrom {artifact.path.name}\nsha256 {artifact.sha256}\n",
        )  # fmt: skip
        # The pinned tree's blobs (and every intermediate patched blob) become reachable for `git apply -3`.
        (new / ".git" / "objects" / "info" / "alternates").write_text(
            str((old.path / ".git" / "objects").resolve()) + "\n", encoding="utf-8"
        )
        outcomes: list[PatchOutcome] = []
        carried: list[str] = []
        patch_dir = work / "patches"
        patch_dir.mkdir()
        skipped: list[str] = []
        for commit, name in zip(old.commits, series.names, strict=True):
            patch = patch_dir / name
            text = git(["format-patch", "-1", "--stdout", "--full-index", "--no-renames", commit], cwd=old.path).stdout
            patch.write_text(text, encoding="utf-8")
            without = f" (tried without {', '.join(skipped)})" if skipped else ""
            outcome = _carry_one(new, commit, name, patch)
            outcomes.append(outcome)
            if outcome.status == "conflict":
                skipped.append(name)
            else:
                carried.append(name)
            log(f"  {name}: {outcome.summary}{without}")
            for note in outcome.notes:
                log(f"      {note}")
        export_series(new, out, tag, carried, quiet)
        conflicts_dir = out / "conflicts"
        shutil.rmtree(conflicts_dir, ignore_errors=True)
        for name in skipped:
            conflicts_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(layout.series_dir / name, conflicts_dir / name)
        result = RebaseResult(pin.package, version, artifact, tuple(outcomes), out, tuple(carried))
        _write_record(out, pin, result)
        return result
    finally:
        if keep_work:
            log(f"  work directories kept at {work} (old/ = pinned workspace, new/ = {version} + carried patches)")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _write_record(out: Path, pin: UpstreamPin, result: RebaseResult) -> None:
    upstream = UpstreamPin(
        package=pin.package, version=result.version, source=pin.source,
        artifact=result.artifact.path.name, sha256=result.artifact.sha256,
    )  # fmt: skip
    write_text_atomic(
        out / "UPSTREAM",
        upstream.render(
            f"Release this rebased series was carried to (from {pin.package} {pin.version}).\nsha256 recorded, not pinned."
        ),
    )
    lines = [
        f"# Rebase of the sagellm series: {pin.package} {pin.version} -> {result.version}",
        "",
        f"Artifact: `{result.artifact.path.name}` (sha256 `{result.artifact.sha256}`).",
        "",
        "| patch | result | details |",
        "|---|---|---|",
    ]
    skipped: list[str] = []
    for outcome in result.outcomes:
        details = "; ".join(str(note) for note in outcome.notes)
        if skipped and outcome.status != "conflict":
            details = (details + "; " if details else "") + f"tried without {', '.join(skipped)}"
        lines.append(f"| {outcome.name} | {outcome.summary} | {details} |")
        if outcome.status == "conflict":
            skipped.append(outcome.name)
    if skipped:
        lines += [
            "",
            f"Conflicted patches are not in `series`; their originals are in `conflicts/`: {', '.join(skipped)}.",
        ]
    write_text_atomic(out / "REPORT.md", "\n".join(lines) + "\n")
