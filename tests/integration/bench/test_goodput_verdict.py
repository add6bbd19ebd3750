"""``benchmarks/goodput.py``: SLO capacity, the fifo knee and the issue-5 verdict over hand-made results."""

from __future__ import annotations

from tests.integration.accel.scripts import load_script


def results(curve: dict[float, float]) -> dict:
    return {str(rate): {"attainment": att, "goodput_rps": round(rate * att, 4)} for rate, att in curve.items()}


def report_for(fifo: dict[float, float], slo_aware: dict[float, float]) -> dict:
    goodput = load_script("benchmarks/goodput.py")
    rates = sorted(fifo)
    report = {"results": {"fifo": results(fifo), "slo_aware": results(slo_aware)}}
    report["comparison"] = goodput.compare(report["results"], rates)
    return goodput, report


def test_verdict_compares_the_rates_each_arm_sustains_at_90_percent():
    goodput, report = report_for({1.0: 0.95, 2.0: 0.85, 3.0: 0.6}, {1.0: 1.0, 2.0: 0.95, 3.0: 0.8})
    cmp_ = report["comparison"]
    assert cmp_["fifo_knee_rps"] == 2.0
    # fifo: 1 + (0.95 - 0.9) / (0.95 - 0.85) = 1.5; slo_aware: 2 + (0.95 - 0.9) / (0.95 - 0.8) = 2.333
    assert cmp_["capacity_rps"] == {"fifo": 1.5, "slo_aware": 2.333}
    assert cmp_["capacity_ratio_vs_fifo"]["slo_aware"] == 1.555
    assert cmp_["at_knee"]["slo_aware"]["ratio_vs_fifo"] == 1.118  # 1.9 / 1.7: bounded by 1 / 0.85
    assert goodput.verdict(report) == (
        "met (slo_aware serves 2.333 req/s at >= 90 % attainment, fifo 1.5 req/s: 1.555x; "
        "1.118x fifo's attained requests/s at its knee)"
    )


def test_verdict_says_which_way_to_move_the_sweep():
    goodput, report = report_for({1.0: 0.95, 2.0: 0.92}, {1.0: 1.0, 2.0: 1.0})
    assert goodput.verdict(report) == "not measured (fifo attains >= 90 % at every swept rate: sweep higher rates)"
    goodput, report = report_for({1.0: 0.8, 2.0: 0.5}, {1.0: 0.7, 2.0: 0.5})
    assert goodput.verdict(report) == (
        "not measured (fifo misses 10 % already at the lowest rate: sweep lower rates); "
        "0.875x fifo's attained requests/s at its knee"
    )
    goodput, report = report_for({1.0: 0.95, 2.0: 0.5}, {1.0: 0.8, 2.0: 0.5})
    assert goodput.verdict(report) == (
        "NOT met (slo_aware serves < lowest req/s at >= 90 % attainment, fifo 1.111 req/s: 0.0x; "
        "1.0x fifo's attained requests/s at its knee)"
    )
