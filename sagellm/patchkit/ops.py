"""The tree operations: apply, check, reverse, clean.

``apply`` builds pristine + series in a fresh sibling directory, then swaps it
into place with renames; a patch that fails leaves the current tree untouched.
A stamp records the inputs and the tree digest, so a second run does nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sagellm.patchkit.build import build_tree
from sagellm.patchkit.fetch import Log
from sagellm.patchkit.layout import Layout
from sagellm.patchkit.lint import LintReport, lint_series
from sagellm.patchkit.pristine import Pristine, ensure_pristine
from sagellm.patchkit.pyproject import render_pyproject
from sagellm.patchkit.series import Series, read_series
from sagellm.patchkit.stamp import Stamp, read_stamp, write_stamp
from sagellm.patchkit.tree import TreeDiff, compare_trees, remove_tree, swap_into_place, tree_sha256, write_text_atomic
from sagellm.patchkit.upstream import UpstreamPin, read_upstream
from sagellm.patchkit.workspace import PatchDifference, roundtrip_differences

try:  # POSIX only; elsewhere concurrent runs are simply not serialized
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

STAMP_FILE = "stamp"
LOCK_FILE = "lock"
BACKUP_DIR = "backup"


@dataclass(frozen=True)
class ApplyResult:
    status: str  # "up-to-date", "applied" or "reversed"
    tree: Path
    patches: tuple[str, ...]
    backup: Path | None = None  # where a hand-edited or unmanaged previous tree was kept

    @property
    def changed(self) -> bool:
        return self.status != "up-to-date"


@dataclass(frozen=True)
class CheckResult:
    tree: Path
    tree_present: bool
    drift: TreeDiff
    lint: LintReport
    roundtrip: tuple[PatchDifference, ...] | None  # patches whose re-export differs; None when not checked

    @property
    def ok(self) -> bool:
        return self.tree_present and self.drift.clean and self.lint.ok and not self.roundtrip


@dataclass(frozen=True)
class CleanResult:
    removed: tuple[Path, ...]


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Serialize patchkit runs on one tree (setup.sh and a developer may race)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _inputs(layout: Layout) -> tuple[UpstreamPin, Series, list[Path]]:
    pin = read_upstream(layout.upstream_file)
    series = read_series(layout.series_dir)
    return pin, series, series.patch_paths()


def _wanted_stamp(pin: UpstreamPin, pristine: Pristine, series: Series | None) -> Stamp:
    return Stamp(
        package=pin.package,
        version=pin.version,
        artifact_sha256=pristine.sha256,
        series_sha256=series.digest() if series is not None else "",
        state="patched" if series is not None else "pristine",
        patches=",".join(series.names) if series is not None else "",
        keep_native_libs="1" if pristine.keep_native_libs else "0",
        tree_sha256="",
    )


def _write_pyproject(layout: Layout, pin: UpstreamPin, pristine: Pristine) -> None:
    path = layout.project_dir(pin) / "pyproject.toml"
    text = render_pyproject(pristine)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text_atomic(path, text)


def _install(
    layout: Layout, pin: UpstreamPin, pristine: Pristine, series: Series | None, patches: list[Path], log: Log
) -> ApplyResult:
    """Shared body of apply (series given) and reverse (series None)."""
    state = layout.state_dir(pin)
    tree = layout.tree_dir(pin)
    wanted = _wanted_stamp(pin, pristine, series)
    current = read_stamp(state / STAMP_FILE)
    current_digest = tree_sha256(tree) if tree.is_dir() else ""
    names = tuple(path.name for path in patches)
    if current and current.same_inputs(wanted) and current_digest and current_digest == current.tree_sha256:
        _write_pyproject(layout, pin, pristine)
        what = f"{len(names)} patches" if series is not None else "pristine, no patches"
        log(f"up to date: {tree} ({pin.package} {pin.version}, {what})")
        return ApplyResult("up-to-date", tree, names)
    if current is None:
        kept_reason = "unmanaged tree (no stamp)" if current_digest else ""
    else:
        kept_reason = "hand-edited tree" if current_digest and current_digest != current.tree_sha256 else ""
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=state))
    try:
        built = build_tree(pristine, patches, staging)  # a failing patch raises here; `tree` is untouched
        digest = tree_sha256(built.package_dir)
        previous = state / f"previous-{staging.name}"
        swap_into_place(built.package_dir, tree, previous)
        backup = None
        if kept_reason and previous.exists():
            backup = state / BACKUP_DIR / pin.package
            remove_tree(backup)
            backup.parent.mkdir(parents=True, exist_ok=True)
            previous.rename(backup)
            log(f"the replaced {kept_reason} was kept at {backup}")
        remove_tree(previous)
    finally:
        remove_tree(staging)
    _write_pyproject(layout, pin, pristine)
    write_stamp(state / STAMP_FILE, replace(wanted, tree_sha256=digest))
    if series is None:
        log(f"reversed: {tree} is the pristine {pin.package} {pin.version} tree")
        return ApplyResult("reversed", tree, (), backup)
    listing = ", ".join(names) if names else "no patches in series"
    log(f"applied: {tree} = {pin.package} {pin.version} + {listing}")
    return ApplyResult("applied", tree, names, backup)


def apply(layout: Layout, log: Log = print) -> ApplyResult:
    """Make ``third_party/<package>/<package>`` equal pristine + series (idempotent, atomic)."""
    pin, series, patches = _inputs(layout)
    with locked(layout.state_dir(pin)):
        pristine = ensure_pristine(pin, layout, log)
        return _install(layout, pin, pristine, series, patches, log)


def reverse(layout: Layout, log: Log = print) -> ApplyResult:
    """Put the pristine (unpatched) tree in place, atomically."""
    pin = read_upstream(layout.upstream_file)
    with locked(layout.state_dir(pin)):
        pristine = ensure_pristine(pin, layout, log)
        return _install(layout, pin, pristine, None, [], log)


def check(layout: Layout, log: Log = print, roundtrip: bool = True) -> CheckResult:
    """Rebuild pristine + series in a temporary directory and compare it with the tree; lint headers.

    With ``roundtrip``, also re-export the series through a workspace and compare the
    patch files byte for byte (a hand-written patch must be normalized by ``export``).
    """
    pin, series, patches = _inputs(layout)
    tree = layout.tree_dir(pin)
    with locked(layout.state_dir(pin)):
        pristine = ensure_pristine(pin, layout, log)
        with tempfile.TemporaryDirectory(prefix="patchkit-check-") as scratch:
            built = build_tree(pristine, patches, Path(scratch) / "tree")
            report = lint_series(layout.series_dir, pin.package, layout.repo_root, built.root)
            drift = compare_trees(built.package_dir, tree).under(pin.package) if tree.is_dir() else TreeDiff()
    differing = None
    if roundtrip and patches:
        differing = roundtrip_differences(layout, log)
    return CheckResult(tree=tree, tree_present=tree.is_dir(), drift=drift, lint=report, roundtrip=differing)


def clean(layout: Layout, log: Log = print, pristine: bool = False) -> CleanResult:
    """Remove the generated tree, pyproject and stamp (and the pristine copy with ``pristine``)."""
    pin = read_upstream(layout.upstream_file)
    project = layout.project_dir(pin)
    targets = [
        layout.tree_dir(pin),
        project / "pyproject.toml",
        project / f"{pin.package}.egg-info",
        project / "build",
    ]
    if pristine:
        targets.append(layout.pristine_root(pin.package, pin.version))
    removed = []
    state = layout.state_dir(pin)
    with locked(state):
        for target in targets:
            if target.exists() or target.is_symlink():
                remove_tree(target)
                removed.append(target)
        for child in sorted(state.iterdir()):
            if child.name != LOCK_FILE:
                remove_tree(child)
    remove_tree(state)
    for path in removed:
        log(f"removed {path}")
    if not removed:
        log("nothing to clean")
    return CleanResult(tuple(removed))
