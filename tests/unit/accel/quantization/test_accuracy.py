"""Accuracy metrics and thresholds (pure functions; the engine runs are integration tests)."""

from __future__ import annotations

import math

import pytest
import torch

from sagellm.accel.quantization.accuracy import (
    AccuracyThresholds,
    KVAccuracyReport,
    argmax_agreement,
    first_divergence,
    greedy_agreement,
    negative_log_likelihood,
    perplexity,
    target_argmax_agreement,
)


def test_greedy_agreement_counts_positions_and_missing_tokens():
    ref = [[1, 2, 3, 4], [5, 6]]
    cand = [[1, 2, 9, 4], [5]]
    a = greedy_agreement(ref, cand)
    assert (a.matched, a.total) == (4, 6)
    assert a.rate == pytest.approx(4 / 6)


def test_first_divergence():
    assert first_divergence([[1, 2, 3], [4, 5], [7]], [[1, 0, 3], [4, 5], [7, 8]]) == [1, None, 1]


def test_argmax_agreements():
    ref = [torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])]
    cand = [torch.tensor([[0.0, 1.5], [0.0, 2.0], [0.0, 3.0]])]
    assert argmax_agreement(ref, cand).matched == 2
    assert target_argmax_agreement(ref, [[1, 0, 0]]).matched == 2


def test_perplexity_of_uniform_logits_is_vocab_size():
    logits = [torch.zeros(5, 7), torch.zeros(3, 7)]
    targets = [[0, 1, 2, 3, 4], [6, 5, 4]]
    assert perplexity(logits, targets) == pytest.approx(7.0)
    total, count = negative_log_likelihood(logits, targets)
    assert count == 8 and total == pytest.approx(8 * math.log(7))


def test_metric_input_validation():
    with pytest.raises(ValueError, match="must match"):
        greedy_agreement([[1]], [])
    with pytest.raises(ValueError, match="does not match 3 targets"):
        perplexity([torch.zeros(2, 4)], [[0, 1, 2]])
    with pytest.raises(ValueError, match="shapes differ"):
        argmax_agreement([torch.zeros(2, 4)], [torch.zeros(3, 4)])


def _report(**overrides) -> KVAccuracyReport:
    values = dict(kv_dtype="int8", quant_policy=8, prompts=32, new_tokens=64, greedy_agreement=0.995,
                  identical_sequences=30, mean_first_divergence=63.0, teacher_forced_agreement=0.999,
                  reference_perplexity=100.0, perplexity=101.0, perplexity_tokens=2032)
    values.update(overrides)
    return KVAccuracyReport(**values)


def test_report_deltas_and_dict():
    report = _report()
    assert report.perplexity_delta == pytest.approx(1.0)
    assert report.perplexity_rel_delta == pytest.approx(0.01)
    assert report.to_dict()["perplexity_rel_delta"] == pytest.approx(0.01)


def test_thresholds_list_each_violation():
    thresholds = AccuracyThresholds(min_greedy_agreement=0.99, min_teacher_forced_agreement=0.999,
                                    max_perplexity_rel_delta=0.005)
    assert thresholds.violations(_report(perplexity=100.2)) == []
    failures = thresholds.violations(_report(greedy_agreement=0.9, teacher_forced_agreement=0.99))
    assert len(failures) == 3
    assert failures[0] == "int8: greedy agreement 0.9000 < 0.99"
    assert AccuracyThresholds().violations(_report(greedy_agreement=0.0)) == []


def test_thresholds_validation():
    with pytest.raises(ValueError, match="AccuracyThresholds.min_greedy_agreement"):
        AccuracyThresholds(min_greedy_agreement=-1.0)
