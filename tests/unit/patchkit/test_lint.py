"""Series parsing, header parsing and lint."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagellm.patchkit import cli
from sagellm.patchkit.errors import ConfigError, ExitCode
from sagellm.patchkit.header import parse_header
from sagellm.patchkit.lint import lint_patch, lint_series, parse_hooks
from sagellm.patchkit.series import parse_series, read_series

from .conftest import PACKAGE, PATCH_1, PATCH_2, Toy, file_diff, patch_text, series_patches


def errors_of(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{issue.where}: {issue.message}" for issue in report.errors]


def test_series_ignores_comments_and_blank_lines(tmp_path: Path) -> None:
    series = parse_series("# header\n\n0001-a.patch  # inline\n\t\n0002-b.patch\n", tmp_path)

    assert series.names == ("0001-a.patch", "0002-b.patch")
    assert [entry.line for entry in series.entries] == [3, 5]


def test_missing_series_file_is_empty(tmp_path: Path) -> None:
    series = read_series(tmp_path)

    assert series.names == () and not series.exists


def test_series_rejects_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="series:1"):
        parse_series("sub/0001-a.patch\n", tmp_path)


def test_header_fields_and_wrapped_why() -> None:
    header = parse_header(series_patches()[PATCH_1])

    assert header.subject == "engine step hook"
    assert header.number == "0001"
    assert header.author == "sagellm developers <dev@sagellm.invalid>"
    assert header.get("Why") == "A seam the toy engine needs; a no-op unless a plugin registers something."
    assert header.get("Upstream-Status") == "Pending"


def test_hooks_allow_notes_and_sibling_members() -> None:
    hooks, bad = parse_hooks("a.b.C.__init__/allocate/_swap, a.mod (new: f, g), a.x.y, not valid!")

    assert [hook.name for hook in hooks] == ["a.b.C.__init__", "a.mod", "a.x.y"]
    assert hooks[0].targets == ("a.b.C.__init__", "a.b.C.allocate", "a.b.C._swap")
    assert hooks[1].note == "new: f, g"
    assert bad == ["not valid!"]


def test_clean_series_lints_ok(toy: Toy) -> None:
    report = lint_series(toy.series_dir, PACKAGE)

    assert report.ok, errors_of(report)
    assert report.checked == (PATCH_1, PATCH_2)


@pytest.mark.parametrize("field", ["Why", "Upstream-Status", "Hooks", "Tests"])
def test_missing_header_field_is_an_error(toy: Toy, field: str) -> None:
    patches = series_patches()
    diff = file_diff("toyllm/cli.py", "def run():\n    return 0\n", "def run():\n    return 1\n")
    patches[PATCH_2] = patch_text("0002", "config seam", [diff], drop=(field,))
    toy.write_series(patches)

    report = lint_series(toy.series_dir, PACKAGE)

    assert not report.ok
    assert errors_of(report) == [
        f"{PATCH_2}: missing '{field}:' line in the message (required: Why, Upstream-Status, Hooks, Tests)"
    ]


def test_missing_subject_is_an_error() -> None:
    text = series_patches()[PATCH_1].replace("Subject: [PATCH 0001] engine step hook\n", "")

    messages = [issue.message for issue in lint_patch(PATCH_1, text, PACKAGE) if issue.severity == "error"]

    assert any("missing 'Subject:'" in message for message in messages)


@pytest.mark.parametrize(
    ("status", "ok"),
    [("Pending", True), ("Submitted [https://github.com/InternLM/lmdeploy/pull/1]", True), ("Submitted", False),
     ("Inappropriate [sagellm-specific seam]", True), ("Backport [0.12.0]", True), ("Maybe", False)],
)  # fmt: skip
def test_upstream_status_keywords(status: str, ok: bool) -> None:
    text = series_patches()[PATCH_1].replace("Upstream-Status: Pending", f"Upstream-Status: {status}")

    errors = [issue for issue in lint_patch(PATCH_1, text, PACKAGE) if issue.severity == "error"]

    assert (not errors) == ok, errors


def test_unlisted_patch_is_reported(toy: Toy) -> None:
    (toy.series_dir / "0003-forgotten.patch").write_text(series_patches()[PATCH_1])

    report = lint_series(toy.series_dir, PACKAGE)

    assert errors_of(report) == [
        f"series: 0003-forgotten.patch is in {toy.series_dir} but not listed in series; add it or delete it"
    ]


def test_duplicate_missing_and_gapped_entries(toy: Toy) -> None:
    (toy.series_dir / "series").write_text(f"{PATCH_1}\n{PATCH_1}\n0003-gap.patch\n{PATCH_2}\n")
    (toy.series_dir / "0003-gap.patch").write_text(series_patches()[PATCH_1].replace("[PATCH 0001]", "[PATCH 0003]"))

    messages = errors_of(lint_series(toy.series_dir, PACKAGE))

    assert any("listed twice" in m for m in messages)
    assert any("0003-gap.patch is patch #2" in m for m in messages)
    assert any(f"{PATCH_2} is patch #3" in m for m in messages)


def test_subject_number_must_match_file_name(toy: Toy) -> None:
    text = series_patches()[PATCH_2].replace("[PATCH 0002]", "[PATCH 0005]")

    messages = [issue.message for issue in lint_patch(PATCH_2, text, PACKAGE, "0002")]

    assert "subject says [PATCH 0005] but the file is numbered 0002" in messages


def test_paths_outside_the_package_are_errors() -> None:
    text = patch_text("0001", "x", [file_diff("other/x.py", "a\n", "b\n")])

    messages = [issue.message for issue in lint_patch(PATCH_1, text, PACKAGE)]

    assert any("outside toyllm/" in message for message in messages)


def test_hooks_are_checked_against_the_tree(tmp_path: Path) -> None:
    (tmp_path / "toyllm").mkdir()
    (tmp_path / "toyllm" / "__init__.py").write_text("")
    (tmp_path / "toyllm" / "engine.py").write_text("class Engine:\n    def step(self):\n        pass\n")
    text = series_patches()[PATCH_1].replace(
        "Hooks: toyllm.engine.Engine.step, toyllm.config (module constants)",
        "Hooks: toyllm.engine.Engine.step, toyllm.engine.Engine.gone",
    )

    warnings = [issue.message for issue in lint_patch(PATCH_1, text, PACKAGE, tree=tmp_path)]

    assert warnings == ["Hooks entry 'toyllm.engine.Engine.gone' was not found in the patched tree"]


def test_lint_cli_exit_codes(toy: Toy) -> None:
    assert cli.main([*toy.cli_args(), "lint"]) == ExitCode.OK
    (toy.series_dir / "0009-stray.patch").write_text("")
    assert cli.main([*toy.cli_args(), "lint"]) == ExitCode.FAILED
