"""`sage transport backends`: every registered backend with whether it can run here."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sagellm.cli.transport import app


def test_backends_json_lists_every_backend():
    result = CliRunner().invoke(app, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert sorted(status) == ["dlslime", "mooncake", "shm", "tcp", "torch_dist"]
    assert status["shm"] is None and status["tcp"] is None and status["torch_dist"] is None


def test_backends_text_says_usable_or_why_not():
    result = CliRunner().invoke(app, ["backends"])
    assert result.exit_code == 0
    assert "  shm         usable" in result.output.splitlines()
