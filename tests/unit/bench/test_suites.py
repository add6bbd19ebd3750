"""Named suites: every target names a scenario of its suite, names are unique, unknown names are listed."""

from __future__ import annotations

import pytest

from sagellm.bench.suites import SUITES, get_suite


@pytest.mark.parametrize("name", sorted(SUITES))
def test_scenario_names_are_unique_and_every_target_names_one_of_them(name):
    suite = get_suite(name)
    names = suite.scenario_names()
    assert len(names) == len(set(names))
    assert {target.scenario for target in suite.targets} <= set(names)


def test_the_report_runs_the_prefix_heavy_workloads_on_the_tiny_and_the_100m_model_with_the_same_server_profile():
    groups = {group.name: group for group in get_suite("report").groups}
    tiny, large = groups["prefix"], groups["prefix-100m"]
    assert (tiny.model, large.model) == ("tiny-long", "100m")
    assert tiny.profile == large.profile
    assert [s.workload.kind for s in tiny.scenarios] == [s.workload.kind for s in large.scenarios] == ["multi_turn", "docqa"]
    targets = {(t.scenario, t.metric): t.minimum for t in get_suite("report").targets}
    for scenario in ("multi_turn", "docqa", "multi_turn_100m", "docqa_100m"):
        assert targets[(scenario, "output_throughput")] == 2.0
        assert targets[(scenario, "ttft_p50")] == 1.25


def test_an_unknown_suite_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown suite 'nope'; valid: report, gate, smoke"):
        get_suite("nope")
