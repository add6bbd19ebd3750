"""`sage quantize`: argument handling around sagellm.accel.quantization.checkpoint."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sagellm.cli.main import app
from tests.unit.accel.quantization.test_checkpoint import _checkpoint

runner = CliRunner()


def test_quantize_prints_destination_and_summary(tmp_path):
    src, _ = _checkpoint(tmp_path / "src")
    dst = tmp_path / "dst"
    result = runner.invoke(app, ["quantize", str(src), str(dst), "--format", "awq-w4", "--group-size", "64"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == str(dst)
    assert lines[1].startswith("awq-w4 (group 64): 4 linear weights quantized, 4 tensors kept; weights ")
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["group_size"] == 64


def test_quantize_reports_bad_input_with_exit_2(tmp_path):
    src, _ = _checkpoint(tmp_path / "src")
    unknown = runner.invoke(app, ["quantize", str(src), str(tmp_path / "a"), "--format", "gptq"])
    assert unknown.exit_code == 2 and "valid names: ['awq-w4', 'awq-w8', 'w8']" in unknown.stderr
    bad_group = runner.invoke(app, ["quantize", str(src), str(tmp_path / "a"), "--format", "awq-w4",
                                    "--group-size", "96"])
    assert bad_group.exit_code == 2 and "power of two" in bad_group.stderr
    assert runner.invoke(app, ["quantize", str(src), str(tmp_path / "b"), "--format", "w8"]).exit_code == 0
    occupied = runner.invoke(app, ["quantize", str(src), str(tmp_path / "b"), "--format", "w8"])
    assert occupied.exit_code == 2 and "--overwrite" in occupied.stderr
    forced = runner.invoke(app, ["quantize", str(src), str(tmp_path / "b"), "--format", "w8", "--overwrite"])
    assert forced.exit_code == 0
