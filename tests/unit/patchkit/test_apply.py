"""apply / check / reverse / clean on the synthetic upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagellm.patchkit import cli
from sagellm.patchkit.errors import ChecksumError, ConfigError, ExitCode, PatchApplyError
from sagellm.patchkit.ops import apply, check, clean, reverse
from sagellm.patchkit.tree import tree_sha256

from .conftest import CONFIG_PATCHED, ENGINE_PATCHED, PACKAGE, PATCH_1, PATCH_2, PLUGINS, Toy


def quiet(_message: str) -> None:
    pass


def test_apply_builds_pristine_plus_series(toy: Toy) -> None:
    result = apply(toy.layout, quiet)

    assert result.status == "applied"
    assert result.patches == (PATCH_1, PATCH_2)
    assert (toy.tree / "engine.py").read_text() == "".join(ENGINE_PATCHED)
    assert (toy.tree / "config.py").read_text() == "".join(CONFIG_PATCHED)
    assert (toy.tree / "plugins.py").read_text() == PLUGINS
    assert not (toy.tree / "lib" / "_native.so").exists()  # native libraries are left out
    assert (toy.pristine / PACKAGE / "engine.py").is_file()  # pristine kept unpatched
    assert "hooks.before_step" not in (toy.pristine / PACKAGE / "engine.py").read_text()


def test_apply_twice_is_a_no_op(toy: Toy) -> None:
    apply(toy.layout, quiet)
    digest = tree_sha256(toy.tree)
    inode = toy.tree.stat().st_ino
    messages: list[str] = []

    result = apply(toy.layout, messages.append)

    assert result.status == "up-to-date"
    assert any(message.startswith("up to date") for message in messages)
    assert tree_sha256(toy.tree) == digest
    assert toy.tree.stat().st_ino == inode  # not rebuilt


def test_apply_rebuilds_when_a_patch_changes(toy: Toy) -> None:
    apply(toy.layout, quiet)
    toy.write_series({PATCH_1: (toy.series_dir / PATCH_1).read_text()})

    result = apply(toy.layout, quiet)

    assert result.status == "applied"
    assert not (toy.tree / "plugins.py").exists()


def test_generated_pyproject_names_distribution_version_and_script(toy: Toy) -> None:
    apply(toy.layout, quiet)
    text = (toy.root / "third_party" / PACKAGE / "pyproject.toml").read_text()

    assert 'name = "toyllm"' in text
    assert 'version = "1.0.0"' in text
    assert '"toyllm" = "toyllm.cli:run"' in text
    assert 'include = ["toyllm", "toyllm.*"]' in text


def test_corrupted_patch_names_patch_and_hunk_and_keeps_previous_tree(toy: Toy) -> None:
    apply(toy.layout, quiet)
    before = tree_sha256(toy.tree)
    stamp = (toy.tree.parent / ".patchkit" / "stamp").read_text()
    corrupted = (toy.series_dir / PATCH_2).read_text().replace(" # config tail 2\n", " # config tail two\n")
    (toy.series_dir / PATCH_2).write_text(corrupted)

    with pytest.raises(PatchApplyError) as caught:
        apply(toy.layout, quiet)

    message = str(caught.value)
    assert PATCH_2 in message
    assert "toyllm/config.py" in message
    assert "hunk #2" in message
    assert caught.value.failures[0].hunk == 2
    assert tree_sha256(toy.tree) == before  # previous tree untouched
    assert (toy.tree.parent / ".patchkit" / "stamp").read_text() == stamp
    assert [p.name for p in (toy.tree.parent / ".patchkit").iterdir() if p.name.startswith("staging")] == []


def test_corrupted_patch_exit_code(toy: Toy, capsys: pytest.CaptureFixture[str]) -> None:
    text = (toy.series_dir / PATCH_1).read_text().replace(" # engine line 8\n", " # engine line eight\n")
    (toy.series_dir / PATCH_1).write_text(text)

    code = cli.main([*toy.cli_args(), "apply"])

    assert code == ExitCode.PATCH_FAILED
    err = capsys.readouterr().err
    assert PATCH_1 in err and "toyllm/engine.py hunk #1" in err
    assert not toy.tree.exists()


def test_check_passes_on_a_clean_tree_and_fails_after_a_hand_edit(toy: Toy) -> None:
    apply(toy.layout, quiet)
    assert check(toy.layout, quiet, roundtrip=False).ok

    (toy.tree / "engine.py").write_text("# edited by hand\n")
    (toy.tree / "stray.py").write_text("")
    result = check(toy.layout, quiet, roundtrip=False)

    assert not result.ok
    assert result.drift.modified == ("toyllm/engine.py",)
    assert result.drift.added == ("toyllm/stray.py",)


def test_check_ignores_bytecode(toy: Toy) -> None:
    apply(toy.layout, quiet)
    (toy.tree / "__pycache__").mkdir()
    (toy.tree / "__pycache__" / "engine.cpython-311.pyc").write_bytes(b"\0")

    assert check(toy.layout, quiet, roundtrip=False).drift.clean


def test_check_cli_exit_codes(toy: Toy, capsys: pytest.CaptureFixture[str]) -> None:
    apply(toy.layout, quiet)
    assert cli.main([*toy.cli_args(), "check", "--no-roundtrip"]) == ExitCode.OK

    (toy.tree / "config.py").write_text("DEVICE = 'mine'\n")
    assert cli.main([*toy.cli_args(), "check", "--no-roundtrip"]) == ExitCode.FAILED
    assert "modified: toyllm/config.py" in capsys.readouterr().err


def test_apply_after_hand_edit_restores_and_keeps_a_backup(toy: Toy) -> None:
    apply(toy.layout, quiet)
    (toy.tree / "engine.py").write_text("# edited by hand\n")

    result = apply(toy.layout, quiet)

    assert result.status == "applied"
    assert (toy.tree / "engine.py").read_text() == "".join(ENGINE_PATCHED)
    assert result.backup is not None and (result.backup / "engine.py").read_text() == "# edited by hand\n"


def test_wrong_checksum_stops_before_extracting(toy: Toy) -> None:
    toy.write_upstream(sha="0" * 64)

    with pytest.raises(ChecksumError) as caught:
        apply(toy.layout, quiet)

    message = str(caught.value)
    assert "0" * 64 in message and caught.value.actual in message and str(toy.wheel) in message
    assert not toy.pristine.exists()
    assert not toy.tree.exists()
    assert not (toy.root / "third_party" / ".pristine").exists()  # not even a partial extraction


def test_wrong_checksum_exit_code_leaves_existing_tree(toy: Toy, capsys: pytest.CaptureFixture[str]) -> None:
    apply(toy.layout, quiet)
    before = tree_sha256(toy.tree)
    toy.write_upstream(sha="f" * 64)

    assert cli.main([*toy.cli_args(), "apply"]) == ExitCode.CHECKSUM
    assert "checksum mismatch" in capsys.readouterr().err
    assert tree_sha256(toy.tree) == before


def test_missing_series_is_an_empty_series(toy: Toy) -> None:
    (toy.series_dir / "series").unlink()
    for patch in toy.series_dir.glob("*.patch"):
        patch.unlink()

    result = apply(toy.layout, quiet)

    assert result.patches == ()
    assert "hooks" not in (toy.tree / "engine.py").read_text()


def test_series_listing_a_missing_patch_is_a_config_error(toy: Toy) -> None:
    toy.write_series({}, series=["0001-missing.patch"])

    with pytest.raises(ConfigError, match="0001-missing.patch"):
        apply(toy.layout, quiet)


def test_keep_native_libs(toy: Toy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGELLM_KEEP_TURBOMIND", "1")

    apply(toy.layout, quiet)

    assert (toy.tree / "lib" / "_native.so").read_bytes().startswith(b"\x7fELF")


def test_reverse_restores_pristine_and_apply_repatches(toy: Toy) -> None:
    apply(toy.layout, quiet)

    assert reverse(toy.layout, quiet).status == "reversed"
    assert (toy.tree / "engine.py").read_bytes() == (toy.pristine / PACKAGE / "engine.py").read_bytes()
    assert not (toy.tree / "plugins.py").exists()
    assert apply(toy.layout, quiet).status == "applied"
    assert (toy.tree / "plugins.py").exists()


def test_clean_removes_generated_files_only(toy: Toy) -> None:
    apply(toy.layout, quiet)
    readme = toy.tree.parent / "README.md"
    readme.write_text("kept\n")

    clean(toy.layout, quiet)

    assert not toy.tree.exists()
    assert not (toy.tree.parent / "pyproject.toml").exists()
    assert not (toy.tree.parent / ".patchkit").exists()
    assert readme.read_text() == "kept\n"
    assert toy.pristine.exists()
    clean(toy.layout, quiet, pristine=True)
    assert not toy.pristine.exists()


def test_edited_pristine_is_extracted_again(toy: Toy) -> None:
    apply(toy.layout, quiet)
    (toy.pristine / PACKAGE / "cli.py").write_text("broken\n")

    assert check(toy.layout, quiet, roundtrip=False).ok
    assert (toy.pristine / PACKAGE / "cli.py").read_text() == "def run():\n    return 0\n"


def test_shell_wrapper_help_documents_exit_codes() -> None:
    import subprocess

    script = Path(__file__).resolve().parents[3] / "scripts" / "apply_patches.sh"
    proc = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)

    assert proc.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 "):
        assert f"  {code}" in proc.stdout
    assert "checksum mismatch" in proc.stdout
