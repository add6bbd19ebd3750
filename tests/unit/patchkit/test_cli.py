"""Entry points: stdlib-only imports, argument parsing, and the `sage patches` sub-app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sagellm.patchkit import cli
from sagellm.patchkit.errors import ExitCode

from .conftest import Toy

REPO = Path(__file__).resolve().parents[3]


def test_patchkit_imports_only_the_standard_library() -> None:
    code = (
        "import json, pkgutil, sys, importlib\n"
        "import sagellm.patchkit as kit\n"
        "for info in pkgutil.iter_modules(kit.__path__):\n"
        "    if info.name != '__main__':\n"
        "        importlib.import_module('sagellm.patchkit.' + info.name)\n"
        "stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {'__main__'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] not in stdlib)))\n"
    )
    # -S: no site-packages at all, as with a bare system python3.
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)

    modules = json.loads(proc.stdout)
    assert "sagellm.patchkit.ops" in modules
    assert [m for m in modules if m != "sagellm" and not m.startswith("sagellm.patchkit")] == []


def test_module_entry_point_help_lists_exit_codes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sagellm.patchkit", "--help"], cwd=REPO, capture_output=True, text=True
    )

    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "3  upstream artifact checksum mismatch" in proc.stdout


def test_no_command_means_apply(toy: Toy) -> None:
    assert cli.main(toy.cli_args()) == ExitCode.OK
    assert toy.tree.is_dir()


def test_verify_is_an_alias_of_check(toy: Toy) -> None:
    cli.main([*toy.cli_args(), "apply"])
    assert cli.main([*toy.cli_args(), "verify", "--no-roundtrip"]) == ExitCode.OK


def test_bad_environment_value_is_a_usage_error(
    toy: Toy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SAGELLM_KEEP_TURBOMIND", "maybe")

    assert cli.main([*toy.cli_args(), "apply"]) == ExitCode.USAGE
    assert "SAGELLM_KEEP_TURBOMIND='maybe'" in capsys.readouterr().err


def test_sage_patches_forwards_to_patchkit(toy: Toy) -> None:
    typer_testing = pytest.importorskip("typer.testing")
    from sagellm.cli.patches import app

    runner = typer_testing.CliRunner()
    paths = toy.cli_args()
    assert runner.invoke(app, [*paths, "apply"]).exit_code == 0
    (toy.tree / "engine.py").write_text("edited\n")

    result = runner.invoke(app, [*paths, "check", "--no-roundtrip"])

    assert result.exit_code == ExitCode.FAILED
