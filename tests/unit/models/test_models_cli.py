from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sagellm.cli.models import app
from sagellm.models.tiny import read_manifest

runner = CliRunner()
SMALL_FLAGS = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "128",
               "--vocab", "512"]


def test_create_tiny_prints_path_and_parameters(tmp_path) -> None:
    target = tmp_path / "m"
    result = runner.invoke(app, ["create-tiny", str(target), "--arch", "qwen2", "--seed", "3", *SMALL_FLAGS])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == str(target)
    assert lines[1].startswith("139,840 parameters (qwen2, hidden 64, 2 layers, 4/2 heads, vocab 512, float32)")
    assert "[1/3] training byte-level BPE tokenizer" in result.stderr
    spec = read_manifest(target)["spec"]
    assert (spec["architecture"], spec["seed"], spec["hidden_size"]) == ("qwen2", 3, 64)

    again = runner.invoke(app, ["create-tiny", str(target), "--arch", "qwen2", "--seed", "3", *SMALL_FLAGS])
    assert again.exit_code == 0 and "exists" in again.stderr
    clash = runner.invoke(app, ["create-tiny", str(target), "--seed", "4", *SMALL_FLAGS])
    assert clash.exit_code == 1 and "different spec" in clash.stderr and "--overwrite" in clash.stderr
    forced = runner.invoke(app, ["create-tiny", str(target), "--seed", "4", "--overwrite", *SMALL_FLAGS])
    assert forced.exit_code == 0 and read_manifest(target)["spec"]["seed"] == 4


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--heads", "3"], "must be divisible by num_heads"), (["--preset", "huge"], "unknown preset 'huge'"),
     (["--arch", "gpt2"], "unknown architecture 'gpt2'")],
)
def test_create_tiny_rejects_bad_flags(tmp_path, flags, message) -> None:
    result = runner.invoke(app, ["create-tiny", str(tmp_path / "m"), *flags])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "m").exists()


def test_default_prints_only_the_path(tmp_path, monkeypatch) -> None:
    from sagellm.models import tiny

    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(tmp_path))
    small = tiny.TinyModelSpec(hidden_size=64, num_layers=1, intermediate_size=128, vocab_size=512)
    monkeypatch.setitem(tiny.PRESETS, "tiny", small)
    result = runner.invoke(app, ["default"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tiny.default_model_path(small)}\n"
    assert read_manifest(result.stdout.strip())["spec_hash"] == small.spec_hash()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "create-tiny" in result.stdout and "default" in result.stdout
