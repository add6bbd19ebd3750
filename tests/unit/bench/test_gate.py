"""Gate arithmetic: ratios against the baseline with tolerances, missing data and failed requests."""

from __future__ import annotations

import json

import pytest

from sagellm.bench.gate import Baseline, Check, evaluate, load_baseline, record_baseline
from sagellm.bench.machine import REPO_ROOT
from sagellm.bench.suites import get_suite

BASE = Baseline("gate", "sagellm", "lmdeploy-stock", (
    Check("chat", "output_throughput", baseline=1.0, tolerance=0.2),
    Check("chat", "e2e_p50", baseline=2.0, tolerance=0.25),
))


def summary(tput: float, e2e: float, errors: int = 0) -> dict:
    return {"chat": {"sagellm": {"output_throughput": tput, "e2e_p50": e2e, "errors": errors},
                     "lmdeploy-stock": {"output_throughput": 100.0, "e2e_p50": 1.0, "errors": 0}}}


def test_within_tolerance_passes():
    results = evaluate(summary(tput=81.0, e2e=0.6), BASE)  # ratios 0.81 >= 0.8 and 1/0.6 = 1.67 >= 1.5
    assert [r.passed for r in results] == [True, True]
    assert results[0].ratio == 0.81 and results[1].ratio == pytest.approx(1 / 0.6)


def test_regression_fails_with_reason():
    results = evaluate(summary(tput=79.0, e2e=0.7), BASE)  # 0.79 < 0.8; 1/0.7 = 1.43 < 1.5
    assert [r.passed for r in results] == [False, False]
    assert "regressed" in results[0].reason and "FAIL chat/output_throughput: ratio 0.790" in results[0].line()


def test_missing_peer_metric_or_failed_requests_fail():
    assert not evaluate({"chat": {"sagellm": {"output_throughput": 1.0}}}, BASE)[0].passed
    s = summary(tput=200.0, e2e=0.1)
    del s["chat"]["sagellm"]["e2e_p50"]
    assert [r.passed for r in evaluate(s, BASE)] == [True, False]
    r = evaluate(summary(tput=200.0, e2e=0.1, errors=2), BASE)[0]
    assert not r.passed and r.reason == "sagellm had 2 failed requests"


def test_candidate_override():
    s = summary(tput=100.0, e2e=0.5)
    s["chat"]["slow"] = {"output_throughput": 10.0, "e2e_p50": 5.0, "errors": 0}
    assert all(r.passed for r in evaluate(s, BASE))
    assert not any(r.passed for r in evaluate(s, BASE, candidate="slow"))


def test_record_and_load_round_trip(tmp_path):
    new = record_baseline(summary(tput=120.0, e2e=0.5), BASE, "gate-x")
    assert [(c.baseline, c.tolerance) for c in new.checks] == [(1.2, 0.2), (2.0, 0.25)]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(new.to_dict()))
    assert load_baseline(path) == new
    path.write_text(json.dumps({**new.to_dict(), "schema": "other/9"}))
    with pytest.raises(ValueError, match="schema"):
        load_baseline(path)


def test_check_validation():
    with pytest.raises(ValueError, match="tolerance"):
        Check("chat", "output_throughput", 1.0, 1.5)
    with pytest.raises(ValueError, match="unknown metric"):
        Check("chat", "speed", 1.0, 0.1)


def test_committed_baseline_matches_the_gate_suite():
    base = load_baseline(REPO_ROOT / "benchmarks" / "baselines" / "gate-cpu.json")
    suite = get_suite(base.suite)
    assert base.reference == suite.reference
    assert {c.scenario for c in base.checks} <= set(suite.scenario_names())


def test_ratios_are_paired_per_repetition_and_the_median_decides():
    def rep(r: int, peer: str, tput: float) -> dict:
        return {"scenario": "chat", "peer": peer, "repetition": r, "metrics": {"output_throughput": tput, "e2e_p50": 1.0}}

    # repetition 1 was disturbed for the reference only: its ratio 2.0 is an outlier the median ignores
    results = [rep(0, "sagellm", 90.0), rep(0, "lmdeploy-stock", 100.0), rep(1, "sagellm", 100.0),
               rep(1, "lmdeploy-stock", 50.0), rep(2, "sagellm", 95.0), rep(2, "lmdeploy-stock", 100.0)]
    s = summary(tput=95.0, e2e=0.5)
    r = evaluate(s, BASE, results=results)[0]
    assert r.per_repetition == (0.9, 2.0, 0.95) and r.ratio == 0.95 and r.passed
    assert "[per repetition 0.900, 2.000, 0.950]" in r.line()
    assert record_baseline(s, BASE, "x", results).checks[0].baseline == 0.95
