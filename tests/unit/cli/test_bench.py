"""`sage bench`: listing, re-rendering a report and gating an existing report (no servers started)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from sagellm.bench.gate import Baseline, Check
from sagellm.cli.main import app
from tests.unit.bench.test_report import fake_report

runner = CliRunner()


def test_suites_and_workloads_are_listed():
    out = runner.invoke(app, ["bench", "suites"])
    assert out.exit_code == 0 and "gate: CI performance gate" in out.output and "chat_c32" in out.output
    out = runner.invoke(app, ["bench", "workloads"])
    assert out.exit_code == 0 and "multi_turn: sessions=16, turns=6" in out.output


def test_report_is_re_rendered(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(fake_report()))
    out = runner.invoke(app, ["bench", "report", str(path), "--no-plots"])
    assert out.exit_code == 0, out.output
    assert "# Benchmark `fake-1`" in (tmp_path / "r.md").read_text()


def test_gate_on_an_existing_report(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps(fake_report()))
    baseline = tmp_path / "b.json"

    def gate(ratio: float, *extra: str):
        b = Baseline("fake", "sagellm", "vllm", (Check("chat_c8", "output_throughput", ratio, 0.1),))
        baseline.write_text(json.dumps(b.to_dict()))
        return runner.invoke(app, ["bench", "gate", "--report", str(report), "--baseline", str(baseline), *extra])

    ok = gate(0.55)  # measured 120 / 220 = 0.545 >= 0.55 * 0.9
    assert ok.exit_code == 0 and "passed: 1/1 checks ok" in ok.output
    bad = gate(0.7)
    assert bad.exit_code == 1 and "FAIL chat_c8/output_throughput" in bad.output and "FAILED: 0/1" in bad.output
    missing = gate(0.5, "--candidate", "nobody")
    assert missing.exit_code == 1 and "no result for nobody" in missing.output


def test_bad_suite_is_a_clear_error():
    out = runner.invoke(app, ["bench", "run", "--suite", "nope"])
    assert out.exit_code == 2 and "unknown suite 'nope'; valid: report, gate, smoke" in out.output
