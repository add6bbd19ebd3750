"""workspace -> edit as commits -> export, and the round-trip check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sagellm.patchkit import cli
from sagellm.patchkit.errors import ExitCode, PatchApplyError, UsageError
from sagellm.patchkit.ops import apply, check
from sagellm.patchkit.tools import git_env
from sagellm.patchkit.workspace import create_workspace, export_series, roundtrip_differences

from .conftest import PATCH_1, PATCH_2, Toy


def quiet(_message: str) -> None:
    pass


def run_git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, env=git_env(), check=True, capture_output=True, text=True).stdout


def normalize_series(toy: Toy, tmp_path: Path) -> None:
    """Replace the difflib-made patches by their exported form (what a committed series looks like)."""
    workspace = create_workspace(toy.layout, tmp_path / "normalize", quiet)
    export_series(workspace.path, toy.series_dir, log=quiet)


def test_workspace_has_the_tag_and_one_commit_per_patch(toy: Toy, tmp_path: Path) -> None:
    workspace = create_workspace(toy.layout, tmp_path / "ws", quiet)

    assert workspace.tag == "upstream-1.0.0"
    assert len(workspace.commits) == 2
    assert run_git(workspace.path, "log", "--format=%s", "upstream-1.0.0..HEAD").splitlines() == [
        "config seam",
        "engine step hook",
    ]
    assert "hooks.before_step" in (workspace.path / "toyllm" / "engine.py").read_text()
    assert run_git(workspace.path, "ls-files", "toyllm/lib") == ""  # native libraries are never committed
    assert run_git(workspace.path, "status", "--porcelain") == ""


def test_export_round_trip_gives_identical_files(toy: Toy, tmp_path: Path) -> None:
    normalize_series(toy, tmp_path)
    before = {p.name: p.read_bytes() for p in toy.series_dir.iterdir()}

    workspace = create_workspace(toy.layout, tmp_path / "ws", quiet)
    result = export_series(workspace.path, toy.series_dir, log=quiet)

    assert result.written == (PATCH_1, PATCH_2)
    assert result.changed == () and result.removed == ()
    assert {p.name: p.read_bytes() for p in toy.series_dir.iterdir()} == before
    assert roundtrip_differences(toy.layout, quiet) == ()


def test_exported_patch_has_a_stable_header(toy: Toy, tmp_path: Path) -> None:
    normalize_series(toy, tmp_path)
    text = (toy.series_dir / PATCH_2).read_text()
    lines = text.splitlines()

    assert lines[0] == "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001"
    assert lines[1] == "From: sagellm developers <dev@sagellm.invalid>"
    assert lines[2] == "Subject: [PATCH 0002] config seam"
    assert not any(line.startswith("Date:") for line in lines)
    for field in ("Why: ", "Upstream-Status: Pending", "Hooks: ", "Tests: "):
        assert any(line.startswith(field) for line in lines), field
    assert "\n---\n" in text and "create mode 100644 toyllm/plugins.py" in text
    assert not text.rstrip("\n").endswith("-- ")  # no git version signature
    assert (toy.series_dir / "series").read_text() == f"# toy series\n{PATCH_1}\n{PATCH_2}\n"


def test_new_commit_in_the_workspace_becomes_patch_0003(toy: Toy, tmp_path: Path) -> None:
    workspace = create_workspace(toy.layout, tmp_path / "ws", quiet)
    (workspace.path / "toyllm" / "cli.py").write_text("def run():\n    return 1\n")
    message = (
        "cli exit code\n\nWhy: x\nUpstream-Status: Inappropriate [toy]\nHooks: toyllm.cli.run\nTests: tests/x.py\n"
    )
    run_git(workspace.path, "commit", "-qam", message)

    result = export_series(workspace.path, toy.series_dir, log=quiet)

    assert result.written == (PATCH_1, PATCH_2, "0003-cli-exit-code.patch")
    assert "Subject: [PATCH 0003] cli exit code" in (toy.series_dir / "0003-cli-exit-code.patch").read_text()
    assert cli.main([*toy.cli_args(), "lint"]) == ExitCode.OK
    assert apply(toy.layout, quiet).patches[-1] == "0003-cli-exit-code.patch"


def test_export_refuses_uncommitted_changes(toy: Toy, tmp_path: Path) -> None:
    workspace = create_workspace(toy.layout, tmp_path / "ws", quiet)
    (workspace.path / "toyllm" / "cli.py").write_text("changed\n")

    with pytest.raises(UsageError, match="uncommitted"):
        export_series(workspace.path, tmp_path / "out", log=quiet)


def test_workspace_refuses_a_non_empty_directory(toy: Toy, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "file").write_text("")

    with pytest.raises(UsageError, match="not empty"):
        create_workspace(toy.layout, tmp_path / "ws", quiet)


def test_workspace_stops_at_the_failing_patch(toy: Toy, tmp_path: Path) -> None:
    text = (toy.series_dir / PATCH_2).read_text().replace(" # config tail 2\n", " # config tail two\n")
    (toy.series_dir / PATCH_2).write_text(text)

    with pytest.raises(PatchApplyError) as caught:
        create_workspace(toy.layout, tmp_path / "ws", quiet)

    assert caught.value.patch == PATCH_2
    assert "toyllm/config.py hunk #2" in str(caught.value)
    assert "git am --continue" in str(caught.value)


def test_check_round_trip_flags_hand_written_patches(toy: Toy, tmp_path: Path) -> None:
    apply(toy.layout, quiet)
    result = check(toy.layout, quiet)

    assert not result.ok  # difflib-made patches lack index lines and a diffstat
    assert [d.name for d in result.roundtrip or ()] == [PATCH_1, PATCH_2]

    normalize_series(toy, tmp_path)
    apply(toy.layout, quiet)
    assert check(toy.layout, quiet).ok
    assert cli.main([*toy.cli_args(), "check"]) == ExitCode.OK
