import pytest

from sagellm.scheduler_ir import CostEstimate, StepCostModel

PRIOR = CostEstimate(prefill_fixed_ms=5.0, prefill_ms_per_token=0.1, decode_fixed_ms=5.0, decode_ms_per_seq=0.2)


def test_prior_until_observed():
    assert StepCostModel(PRIOR).estimate() == PRIOR


def test_fits_both_lines_exactly_from_noiseless_steps():
    model = StepCostModel(PRIOR, decay=1.0)
    for tokens in (100, 200, 400):
        model.observe_prefill(tokens, 2.0 + 0.5 * tokens)
    for batch in (1, 4, 8):
        model.observe_decode(batch, 3.0 + 0.25 * batch)
    est = model.estimate()
    assert est.prefill_fixed_ms == pytest.approx(2.0)
    assert est.prefill_ms_per_token == pytest.approx(0.5)
    assert est.decode_fixed_ms == pytest.approx(3.0)
    assert est.decode_ms_per_seq == pytest.approx(0.25)


def test_one_size_keeps_the_prior_slope_and_fits_the_intercept():
    model = StepCostModel(PRIOR, decay=1.0)
    model.observe_prefill(100, 30.0)
    model.observe_prefill(100, 40.0)
    est = model.estimate()
    assert est.prefill_ms_per_token == 0.1
    assert est.prefill_fixed_ms == pytest.approx(25.0)  # mean 35 - 0.1 * 100


def test_decay_follows_a_change():
    model = StepCostModel(PRIOR, decay=0.5)
    for _ in range(30):
        model.observe_decode(1, 100.0)
        model.observe_decode(2, 100.0)
    for _ in range(30):
        model.observe_decode(1, 10.0)
        model.observe_decode(2, 10.0)
    est = model.estimate()
    assert est.decode_ms_per_seq == pytest.approx(0.0, abs=1e-9)
    assert est.decode_fixed_ms == pytest.approx(10.0, abs=1e-3)


def test_a_falling_line_is_clamped_to_a_flat_one():
    model = StepCostModel(PRIOR, decay=1.0)
    model.observe_prefill(10, 20.0)
    model.observe_prefill(20, 10.0)
    est = model.estimate()
    assert (est.prefill_ms_per_token, est.prefill_fixed_ms) == (0.0, 15.0)


def test_rejects_bad_observations():
    model = StepCostModel()
    with pytest.raises(ValueError, match="tokens: got 0"):
        model.observe_prefill(0, 1.0)
    with pytest.raises(ValueError, match="ms: got -1"):
        model.observe_decode(1, -1.0)
    with pytest.raises(ValueError, match="decay"):
        StepCostModel(decay=1.5)


def test_an_outlier_counts_as_the_bound_once_the_line_has_weight():
    model = StepCostModel(PRIOR, decay=1.0, outlier_factor=3.0, outlier_after=8.0)
    for _ in range(8):
        model.observe_decode(2, 6.0)
    model.observe_decode(2, 150.0)  # a loop timed across a prefill step: counts as 18 ms
    assert model.estimate().decode_fixed_ms == pytest.approx((8 * 6.0 + 18.0) / 9 - 0.2 * 2)


def test_outliers_pass_while_the_line_is_light_and_a_lasting_change_is_followed():
    model = StepCostModel(PRIOR, decay=0.5, outlier_factor=3.0, outlier_after=1.5)
    model.observe_decode(1, 100.0)  # weight 0 before it: taken as is
    assert model.estimate().decode_fixed_ms == pytest.approx(100.0 - 0.2)
    for _ in range(10):
        model.observe_decode(1, 5.0)
    for _ in range(10):
        model.observe_decode(1, 50.0)  # 10x: clipped to 3x the prediction each time, still converges
    assert model.estimate().decode_fixed_ms == pytest.approx(50.0 - 0.2, rel=1e-2)


def test_rejects_bad_outlier_settings():
    with pytest.raises(ValueError, match="outlier_factor: got 0.5"):
        StepCostModel(outlier_factor=0.5)


def test_decode_floor_is_a_low_percentile_of_recent_loops():
    model = StepCostModel(PRIOR)
    for ms in range(1, 8):
        model.observe_decode(1, float(ms))
    assert model.estimate().decode_floor_ms == 0.0  # fewer than 8 loops seen
    model.observe_decode(4, 150.0)
    assert model.estimate().decode_floor_ms == 1.0  # 10th percentile of 1..7, 150 -> index 0
    for _ in range(256):
        model.observe_decode(2, 6.0)
    assert model.estimate().decode_floor_ms == 6.0  # the window keeps the last 256


def test_decode_floor_is_taken_at_the_smallest_batch_seen():
    model = StepCostModel(PRIOR)
    for _ in range(200):
        model.observe_decode(5, 11.0)  # a busy engine: 5-request loops
    for ms in (5.0, 6.0, 7.0, 5.5, 6.5, 7.5, 8.0, 9.0, 10.0, 12.0):
        model.observe_decode(1, ms)
    # the single-request loops bound any request's TPOT, not the 5-request ones
    assert model.estimate().decode_floor_ms == 5.0
    model = StepCostModel(PRIOR)
    for batch, ms in ((1, 5.0), (2, 7.0), (2, 7.5)) + ((3, 9.0),) * 6 + ((6, 20.0),) * 20:
        model.observe_decode(batch, ms)
    # too few at batch 1: batches 1-3 together make the sample (9 loops, 10th percentile -> the first)
    assert model.estimate().decode_floor_ms == 5.0


def test_prefill_floor_is_the_lowest_recent_time_per_token():
    model = StepCostModel(PRIOR)
    assert model.estimate().prefill_floor_ms_per_token == 0.0
    model.observe_prefill(80, 400.0)   # a cold first step: 5 ms/token
    model.observe_prefill(1500, 190.0)
    model.observe_prefill(1600, 210.0)
    assert model.estimate().prefill_floor_ms_per_token == pytest.approx(190.0 / 1500)
    for _ in range(64):
        model.observe_prefill(100, 20.0)  # the window keeps the last 64 steps
    assert model.estimate().prefill_floor_ms_per_token == pytest.approx(0.2)


def test_decode_loops_with_history_fit_a_plane():
    model = StepCostModel(PRIOR, decay=1.0, plane_decay=1.0)
    # ms = 4 + 1.0 per sequence + 0.002 per history token (batch and history vary independently)
    for batch, kv in ((1, 100), (2, 200), (2, 1700), (3, 300), (3, 3300), (1, 1500)):
        model.observe_decode(batch, 4.0 + 1.0 * batch + 0.002 * kv, kv_tokens=kv)
    est = model.estimate()
    assert est.decode_fixed_ms == pytest.approx(4.0)
    assert est.decode_ms_per_kv_token == pytest.approx(0.002)
    assert est.decode_loop_ms(2, 1600) == pytest.approx(4.0 + 2.0 + 3.2)
    assert est.decode_loop_ms(1, 100) == pytest.approx(5.2)
    # without a history the line is the plane at the mean history per sequence of the loops seen
    assert est.decode_mean_kv_per_seq == pytest.approx(7100 / 12)
    assert est.decode_loop_ms(2) == pytest.approx(est.decode_loop_ms(2, round(2 * 7100 / 12)), abs=0.01)


def test_history_proportional_to_the_batch_keeps_the_line():
    model = StepCostModel(PRIOR, decay=1.0, plane_decay=1.0)
    for batch in (1, 2, 4):
        model.observe_decode(batch, 3.0 + 0.5 * batch, kv_tokens=100 * batch)
    est = model.estimate()
    assert (est.decode_fixed_ms, est.decode_ms_per_seq) == (pytest.approx(3.0), pytest.approx(0.5))
    assert est.decode_ms_per_kv_token == 0.0
    assert est.decode_loop_ms(2, 5000) == est.decode_loop_ms(2) == pytest.approx(4.0)


def test_rejects_a_negative_history():
    with pytest.raises(ValueError, match="kv_tokens"):
        StepCostModel(PRIOR).observe_decode(1, 5.0, kv_tokens=-1)


def test_the_estimate_is_refitted_only_after_an_observation():
    model = StepCostModel(PRIOR)
    first = model.estimate()
    assert model.estimate() is first
    model.observe_prefill(100, 20.0)
    after_prefill = model.estimate()
    assert after_prefill is not first and model.estimate() is after_prefill
    model.observe_decode(2, 7.0)
    assert model.estimate() is not after_prefill
    assert model.estimate() == model._fit()
