"""rebase and compat on synthetic releases."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sagellm.patchkit.compat import run_compat
from sagellm.patchkit.errors import FetchError, UsageError
from sagellm.patchkit.fetch import sha256_file
from sagellm.patchkit.rebase import parse_patch_output, rebase
from sagellm.patchkit.wheel import extract_package

from .conftest import BASE_FILES, CONFIG, ENGINE, PACKAGE, PATCH_1, PATCH_2, Toy, replace_line

pytestmark = pytest.mark.skipif(shutil.which("patch") is None, reason="rebase needs GNU patch")


def quiet(_message: str) -> None:
    pass


def release_files(engine: list[str] = ENGINE, config: list[str] = CONFIG, **extra: str) -> dict[str, str | bytes]:
    files = dict(BASE_FILES)
    files["toyllm/engine.py"] = "".join(engine)
    files["toyllm/config.py"] = "".join(config)
    files.update({f"toyllm/{name}.py": text for name, text in extra.items()})
    return files


@pytest.fixture
def releases(toy: Toy) -> Toy:
    toy.release("1.0.1", release_files(new_module="X = 1\n"))
    toy.release("1.1.0", release_files(
        engine=[f"# new header {i}\n" for i in range(5)] + ENGINE,
        config=replace_line(CONFIG, "# config line 3\n", "# config line three\n"),
    ))  # fmt: skip
    toy.release("1.2.0", release_files(engine=replace_line(ENGINE, "        beta = 2\n", "        beta = 20\n")))
    toy.release("1.3.0", release_files(
        engine=replace_line(ENGINE, "        inputs = self.prepare(batch)\n", "        inputs = self.prepare(batch, mode=1)\n")
    ))  # fmt: skip
    return toy


def statuses(result) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(o.name, o.summary) for o in result.outcomes]


def test_clean_release(releases: Toy) -> None:
    pinned = {p.name: p.read_bytes() for p in releases.series_dir.iterdir()}

    result = rebase(releases.layout, "1.0.1", log=quiet)

    assert statuses(result) == [(PATCH_1, "clean"), (PATCH_2, "clean")]
    assert result.out_dir == releases.root / "patches" / "rebased" / "toyllm-1.0.1"
    assert (result.out_dir / "series").read_text().splitlines()[-2:] == [PATCH_1, PATCH_2]
    assert {p.name: p.read_bytes() for p in releases.series_dir.iterdir()} == pinned  # pinned series untouched
    wheel = releases.cache / "toyllm-1.0.1" / "toyllm-1.0.1-cp311-cp311-manylinux2014_x86_64.whl"
    assert f"sha256={sha256_file(wheel)}" in (result.out_dir / "UPSTREAM").read_text()
    assert (releases.root / "patches" / "rebased" / ".gitignore").read_text().endswith("*\n")


def test_fuzz_release_reports_offset_and_fuzz(releases: Toy) -> None:
    result = rebase(releases.layout, "1.1.0", log=quiet)

    assert statuses(result) == [(PATCH_1, "fuzz (offset 5)"), (PATCH_2, "fuzz (fuzz 1)")]
    assert [str(n) for n in result.outcomes[0].notes] == ["toyllm/engine.py hunk #1: offset +5 lines"]
    assert [str(n) for n in result.outcomes[1].notes] == ["toyllm/config.py hunk #1: fuzz 1"]


def test_three_way_release_and_regenerated_patch_applies_exactly(releases: Toy, tmp_path: Path) -> None:
    result = rebase(releases.layout, "1.2.0", out_dir=tmp_path / "out", log=quiet)

    assert statuses(result) == [(PATCH_1, "3way"), (PATCH_2, "clean")]
    tree = tmp_path / "release"
    extract_package(
        releases.cache / "toyllm-1.2.0" / "toyllm-1.2.0-cp311-cp311-manylinux2014_x86_64.whl", PACKAGE, tree, False
    )
    for name in (PATCH_1, PATCH_2):
        subprocess.run(["git", "apply", "-p1", str(tmp_path / "out" / name)], cwd=tree, check=True)
    engine = (tree / "toyllm" / "engine.py").read_text()
    assert "beta = 20" in engine and "hooks.before_step" in engine


def test_conflict_is_reported_and_later_patches_still_tried(releases: Toy) -> None:
    messages: list[str] = []

    result = rebase(releases.layout, "1.3.0", log=messages.append)

    assert statuses(result) == [(PATCH_1, "conflict (toyllm/engine.py)"), (PATCH_2, "clean")]
    assert str(result.outcomes[0].notes[0]) == "toyllm/engine.py hunk #1: FAILED at line 8"
    assert result.carried == (PATCH_2,)
    assert any(f"{PATCH_2}: clean (tried without {PATCH_1})" in m for m in messages)
    assert (result.out_dir / "series").read_text().splitlines()[-1] == PATCH_2
    assert (result.out_dir / "conflicts" / PATCH_1).is_file()
    assert "FAILED at line 8" in (result.out_dir / "REPORT.md").read_text()


def test_rebase_never_writes_into_the_pinned_series(releases: Toy) -> None:
    with pytest.raises(UsageError, match="pinned series"):
        rebase(releases.layout, "1.0.1", out_dir=releases.series_dir, log=quiet)


def test_compat_writes_one_row_per_release(releases: Toy, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(package: str, version: str, *args: object) -> Path:
        raise FetchError(f"no {package}=={version} offline")

    monkeypatch.setattr("sagellm.patchkit.fetch.pip_download", offline)
    progress: list[str] = []

    report = run_compat(releases.layout, ["1.0.1", "1.3.0", "9.9.9"], "compat 1.0.1 1.3.0 9.9.9", log=progress.append)

    text = report.output.read_text()
    assert report.output == releases.root / "patches" / "COMPATIBILITY.md"
    assert "Generated by `compat 1.0.1 1.3.0 9.9.9`" in text
    assert f"| release | artifact sha256 | {PATCH_1} | {PATCH_2} |" in text
    assert "| 1.0.1 | `" in text and "| clean | clean |" in text
    assert "| conflict (1 file, 1 hunk) | clean |" in text
    assert f"- {PATCH_1} (conflict): toyllm/engine.py hunk #1: FAILED at line 8" in text
    assert "| 9.9.9 | not fetched: no toyllm==9.9.9 offline | - | - |" in text
    assert report.failed_fetches == ("9.9.9",)
    assert [line for line in progress if line.startswith("[")][::2] == [
        "[1/3] toyllm 1.0.1: fetching and rebasing 2 patches",
        "[2/3] toyllm 1.3.0: fetching and rebasing 2 patches",
        "[3/3] toyllm 9.9.9: fetching and rebasing 2 patches",
    ]


def test_parse_patch_output() -> None:
    output = (
        "checking file a/x.py\n"
        "Hunk #1 succeeded at 15 (offset 3 lines).\n"
        "Hunk #2 succeeded at 40 with fuzz 2 (offset -1 line).\n"
        "Hunk #3 FAILED at 60.\n"
        "1 out of 3 hunks FAILED\n"
    )

    moved, failed, max_offset, max_fuzz = parse_patch_output(output)

    assert [str(n) for n in moved] == ["a/x.py hunk #1: offset +3 lines", "a/x.py hunk #2: fuzz 2, offset -1 lines"]
    assert [str(n) for n in failed] == ["a/x.py hunk #3: FAILED at line 60"]
    assert (max_offset, max_fuzz) == (3, 2)
