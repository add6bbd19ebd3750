"""The perf gate against real servers: it passes sagellm and fails a copy slowed down on purpose.

`benchmarks/gate --self-test` starts sagellm, stock LMDeploy and a sagellm with the `slowdown` plugin
active (SAGELLM_BENCH_INJECT_DELAY_MS=500) on the tiny model, runs the gate suite once (interleaved) and
gates both sagellm copies against the committed baseline. scripts/test.sh runs the same command as its
perf-gate step and then sets SAGELLM_GATE_SELF_TEST_DONE=1, so CI does not run it twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
GATE = REPO_ROOT / "benchmarks" / "gate"


@pytest.mark.slow
def test_gate_passes_sagellm_and_catches_an_injected_slowdown(tmp_path):
    if os.environ.get("SAGELLM_GATE_SELF_TEST_DONE") == "1":
        pytest.skip("scripts/test.sh already ran `benchmarks/gate --self-test` (its perf-gate step) in this run")
    run = subprocess.run([sys.executable, str(GATE), "--self-test", "--no-progress", "--out", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "[gate] sagellm: passed: 6/6 checks ok" in out
    assert "[gate] slowed: FAILED" in out and "caught the injected 500 ms slowdown of slowed" in out

    # the same run gated with the slowed copy as the candidate: exit status 1, failing checks named
    (report,) = tmp_path.glob("gate-*.json")
    slowed = subprocess.run([sys.executable, str(GATE), "--report", str(report), "--candidate", "slowed"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert slowed.returncode == 1, slowed.stdout + slowed.stderr
    assert "FAIL chat_c1/output_throughput" in slowed.stdout
    ok = subprocess.run([sys.executable, str(GATE), "--report", str(report)], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
