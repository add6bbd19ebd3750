"""The performance gate: a run's ratios against a committed baseline, with per-metric tolerances.

The gate never compares absolute times (they move with the machine and its load): each check is the
ratio of a *candidate* peer to a *reference* peer measured in the same run, on one scenario and metric,
oriented so that > 1 means the candidate is better (:func:`sagellm.bench.metrics.better_ratio`). With
per-repetition results the ratio is taken within each repetition (the two peers ran back to back) and the
median over repetitions is used, so one disturbed repetition does not decide. A check fails when
``ratio < baseline * (1 - tolerance)``, when the ratio is missing, or when the candidate had failed requests
in that scenario.

Baseline file (``benchmarks/baselines/gate-cpu.json``)::

    {"schema": "sagellm-bench-gate/1", "suite": "gate", "candidate": "sagellm", "reference": "lmdeploy-stock",
     "recorded_from": "...", "checks": [{"scenario": "chat_c8", "metric": "output_throughput",
                                          "baseline": 1.03, "tolerance": 0.3}, ...]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sagellm.bench.metrics import METRICS, better_ratio
from sagellm.bench.stats import median

__all__ = ["BASELINE_SCHEMA", "Baseline", "Check", "CheckResult", "evaluate", "load_baseline", "record_baseline"]

BASELINE_SCHEMA = "sagellm-bench-gate/1"


@dataclass(frozen=True)
class Check:
    scenario: str
    metric: str
    baseline: float
    tolerance: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"gate check {self.scenario}/{self.metric}: unknown metric; known: {', '.join(METRICS)}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"gate check {self.scenario}/{self.metric}: tolerance must be in [0, 1), got {self.tolerance}")
        if not self.baseline > 0:
            raise ValueError(f"gate check {self.scenario}/{self.metric}: baseline ratio must be > 0, got {self.baseline}")

    @property
    def minimum(self) -> float:
        return self.baseline * (1 - self.tolerance)


@dataclass(frozen=True)
class Baseline:
    suite: str
    candidate: str
    reference: str
    checks: tuple[Check, ...]
    recorded_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": BASELINE_SCHEMA, "suite": self.suite, "candidate": self.candidate, "reference": self.reference,
                "recorded_from": self.recorded_from, "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class CheckResult:
    check: Check
    ratio: float | None
    candidate_value: float | None
    reference_value: float | None
    errors: int
    passed: bool
    reason: str
    per_repetition: tuple[float, ...] = ()

    def line(self) -> str:
        c = self.check
        value = "missing" if self.ratio is None else f"{self.ratio:.3f}"
        reps = f" [per repetition {', '.join(f'{r:.3f}' for r in self.per_repetition)}]" if len(self.per_repetition) > 1 else ""
        verdict = "ok  " if self.passed else "FAIL"
        return (f"{verdict} {c.scenario}/{c.metric}: ratio {value}{reps} (baseline {c.baseline:.3f}, tolerance "
                f"{c.tolerance:.0%}, minimum {c.minimum:.3f}){'' if self.passed else ' -- ' + self.reason}")


def load_baseline(path: str | Path) -> Baseline:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != BASELINE_SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r}, expected {BASELINE_SCHEMA!r}")
    checks = tuple(Check(**c) for c in data["checks"])
    if not checks:
        raise ValueError(f"{path}: no checks")
    return Baseline(data["suite"], data["candidate"], data["reference"], checks, data.get("recorded_from", ""))


def _paired(results: Sequence[Mapping[str, Any]], scenario: str, metric: str, candidate: str,
            reference: str) -> list[float]:
    """Per-repetition ratios of ``candidate`` over ``reference`` (repetitions where both have the metric)."""
    by_rep: dict[int, dict[str, Mapping[str, Any]]] = {}
    for r in results:
        if r.get("scenario") == scenario and r.get("peer") in (candidate, reference):
            by_rep.setdefault(int(r.get("repetition", 0)), {})[r["peer"]] = r.get("metrics") or {}
    out = []
    for rep in sorted(by_rep):
        pair = by_rep[rep]
        if candidate in pair and reference in pair:
            value = better_ratio(metric, pair[candidate].get(metric), pair[reference].get(metric))
            if value is not None:
                out.append(value)
    return out


def evaluate(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], baseline: Baseline,
             candidate: str | None = None, results: Sequence[Mapping[str, Any]] = ()) -> list[CheckResult]:
    """Check a run against ``baseline``: ``summary`` is the report's ``{scenario: {peer: metrics}}``,
    ``results`` its per-repetition entries (when given, ratios are paired per repetition)."""
    cand = candidate or baseline.candidate
    out = []
    for check in baseline.checks:
        peers = summary.get(check.scenario, {})
        mine, ref = peers.get(cand), peers.get(baseline.reference)
        if mine is None or ref is None:
            missing = [p for p, m in ((cand, mine), (baseline.reference, ref)) if m is None]
            out.append(CheckResult(check, None, None, None, 0, False,
                                   f"scenario {check.scenario!r} has no result for {', '.join(missing)}"))
            continue
        value, ref_value = mine.get(check.metric), ref.get(check.metric)
        paired = _paired(results, check.scenario, check.metric, cand, baseline.reference)
        ratio = median(paired) if paired else better_ratio(check.metric, value, ref_value)
        errors = int(mine.get("errors") or 0)
        if errors:
            passed, reason = False, f"{cand} had {errors} failed requests"
        elif ratio is None:
            passed, reason = False, f"metric {check.metric} missing ({cand}: {value}, {baseline.reference}: {ref_value})"
        elif ratio < check.minimum:
            passed, reason = False, f"{cand} regressed: {ratio / check.baseline - 1:+.0%} vs the baseline ratio"
        else:
            passed, reason = True, ""
        out.append(CheckResult(check, ratio, value, ref_value, errors, passed, reason, tuple(paired)))
    return out


def record_baseline(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], template: Baseline,
                    recorded_from: str, results: Sequence[Mapping[str, Any]] = ()) -> Baseline:
    """A new baseline with ``template``'s checks and tolerances and the ratios measured in this run."""
    checks = []
    for c in template.checks:
        paired = _paired(results, c.scenario, c.metric, template.candidate, template.reference)
        peers = summary.get(c.scenario, {})
        ratio = median(paired) if paired else better_ratio(
            c.metric, (peers.get(template.candidate) or {}).get(c.metric), (peers.get(template.reference) or {}).get(c.metric))
        if ratio is None:
            raise ValueError(f"cannot record {c.scenario}/{c.metric}: no ratio in this run")
        checks.append(Check(c.scenario, c.metric, round(ratio, 4), c.tolerance))
    return Baseline(template.suite, template.candidate, template.reference, tuple(checks), recorded_from)
