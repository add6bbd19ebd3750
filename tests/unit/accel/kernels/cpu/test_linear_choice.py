"""The measured per-model choice of the row counts a packed linear runs packed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu.linear import PackedLinear
from sagellm.accel.kernels.cpu.linear_choice import (
    PACKED_WIN_RATIO,
    LinearCalibration,
    LinearMeasurement,
    RowChoice,
    RowTiming,
    measure_linears,
    measured_rows,
)
from tests.unit.accel.kernels.cpu.markers import needs_onednn


@pytest.mark.parametrize(("min_rows", "rows"), [
    (4, (4, 8, 16, 32, 64, 256)),
    (0, (1, 4, 8, 16, 32, 64, 256)),
    (1, (1, 4, 8, 16, 32, 64, 256)),
    (10, (10, 16, 32, 64, 256)),
    (300, (300,)),
])
def test_measured_rows_start_at_min_rows(min_rows, rows):
    assert measured_rows(min_rows) == rows


def test_a_row_count_takes_the_choice_of_the_largest_measured_count_at_or_below_it():
    choice = RowChoice((4, 8, 16, 256), (True, False, True, False))
    assert [choice.packs(rows) for rows in (1, 3, 4, 7, 8, 15, 16, 255, 256, 4096)] == [
        False, False, True, True, False, False, True, True, False, False]
    assert choice.packs_any
    assert not RowChoice((4,), (False,)).packs_any


@pytest.mark.parametrize(("rows", "packed"), [((8, 4), (True, True)), ((4, 4), (True, True)), ((4, 8), (True,))])
def test_a_row_choice_needs_increasing_rows_with_one_choice_each(rows, packed):
    with pytest.raises(ValueError, match="strictly increasing"):
        RowChoice(rows, packed)


def _measurement() -> LinearMeasurement:
    # the packed path wins where its pass took <= PACKED_WIN_RATIO of F.linear's
    return LinearMeasurement(
        layers=5,
        measured_layers=3,
        measured_bytes=1 << 20,
        timings=(
            RowTiming(4, 1, plain_s=0.010, packed_s=PACKED_WIN_RATIO * 0.010),
            RowTiming(32, 2, plain_s=0.010, packed_s=0.0096),
        ),
    )


def test_a_row_count_packs_only_where_its_pass_won_by_the_margin():
    assert _measurement().choice == RowChoice((4, 32), (True, False))


def test_the_summary_names_each_row_count_with_its_pass_times_and_choice():
    assert _measurement().summary() == (
        "3 of 5 linears (1 MiB), F.linear / packed per pass: 4 rows x 1 thr: 10.00 / 9.50 ms -> packed, "
        "32 rows x 2 thr: 10.00 / 9.60 ms -> F.linear")


def _layers(count=3, seed=0, out_features=48, in_features=32):
    generator = torch.Generator().manual_seed(seed)
    return [(PackedLinear(), torch.randn(out_features, in_features, generator=generator), None)
            for _ in range(count)]


@needs_onednn
def test_measuring_times_every_layer_each_way_on_the_threads_of_each_row_count_and_restores_threads():
    layers = _layers()
    asked = []

    def threads_for(rows):
        asked.append(rows)
        return 1 if rows < 16 else 2

    torch.set_num_threads(1)
    measurement = measure_linears(layers, (4, 16), threads_for, repetitions=1)
    assert torch.get_num_threads() == 1
    assert asked == [4, 16]
    assert [(t.rows, t.threads) for t in measurement.timings] == [(4, 1), (16, 2)]
    assert all(t.plain_s > 0 and t.packed_s > 0 for t in measurement.timings)
    assert (measurement.layers, measurement.measured_layers, measurement.measured_bytes) == (3, 3, 3 * 48 * 32 * 4)
    assert all(layer.is_packed for layer, _, _ in layers)


@needs_onednn
def test_measuring_reads_at_most_max_bytes_of_weights_but_always_one_layer():
    layers = _layers(count=4)
    one = 48 * 32 * 4
    assert measure_linears(layers, (4,), lambda rows: 1, repetitions=1, max_bytes=2 * one).measured_layers == 2
    assert measure_linears(layers, (4,), lambda rows: 1, repetitions=1, max_bytes=1).measured_layers == 1
    with pytest.raises(ValueError, match="at least one layer"):
        measure_linears([], (4,), lambda rows: 1)


@needs_onednn
def test_choosing_packs_only_the_chosen_row_counts_and_a_choice_of_none_drops_the_packed_copy():
    layer = PackedLinear()
    weight = torch.randn(48, 32)
    with torch.inference_mode():
        layer.choose(RowChoice((4, 16), (False, True)))
        out = layer(torch.ones(8, 32), weight)
        assert not layer.is_packed  # 8 rows: F.linear
        assert torch.equal(out, F.linear(torch.ones(8, 32), weight))
        layer(torch.ones(16, 32), weight)
        assert layer.is_packed
        layer.choose(RowChoice((4,), (False,)))
        assert not layer.is_packed and layer.choice == RowChoice((4,), (False,))


@needs_onednn
def test_a_calibration_collects_undecided_layers_once_each_and_gives_them_one_choice():
    calibration = LinearCalibration()
    first, second = PackedLinear(calibration=calibration), PackedLinear(calibration=calibration)
    weights = [torch.randn(48, 32), torch.randn(64, 48)]
    with torch.inference_mode():
        for _ in range(2):
            first(torch.ones(8, 32), weights[0])
            second(torch.ones(8, 48), weights[1])
    assert calibration.pending == 2
    measurement = calibration.decide(lambda rows: 1, key="model", repetitions=1)
    assert calibration.pending == 0 and calibration.last is measurement
    assert (measurement.layers, measurement.measured_layers) == (2, 2)
    assert first.choice == second.choice == measurement.choice
    with torch.inference_mode():
        first(torch.ones(8, 32), weights[0])
    assert calibration.pending == 0  # decided layers no longer report
    assert calibration.decide(lambda rows: 1, key="model") is None


@needs_onednn
def test_a_layer_that_first_runs_later_takes_its_models_choice_unmeasured_and_another_model_is_measured():
    calibration = LinearCalibration()
    decoder, head, other = (PackedLinear(calibration=calibration) for _ in range(3))
    weight = torch.randn(48, 32)
    with torch.inference_mode():
        decoder(torch.ones(8, 32), weight)
        calibration.decide(lambda rows: 1, key="model", repetitions=1)
        head(torch.ones(8, 32), weight)
        assert calibration.decide(lambda rows: 1, key="model", repetitions=1) is None
        assert head.choice is decoder.choice
        other(torch.ones(8, 32), weight)
        assert calibration.decide(lambda rows: 1, key="other model", repetitions=1) is not None
        assert other.choice is not decoder.choice


@needs_onednn
def test_layers_of_different_min_rows_are_measured_from_their_own_first_row_count():
    calibration = LinearCalibration()
    layers = [PackedLinear(min_rows=4, calibration=calibration), PackedLinear(min_rows=0, calibration=calibration)]
    weight = torch.randn(48, 32)
    with torch.inference_mode():
        for layer in layers:
            layer(torch.ones(8, 32), weight)
    calibration.decide(lambda rows: 1, key="model", repetitions=1)
    assert layers[0].choice.rows == measured_rows(4)
    assert layers[1].choice.rows == measured_rows(0)


def test_layers_without_a_calibration_keep_no_choice():
    layer = PackedLinear()
    with torch.inference_mode():
        layer(torch.ones(8, 32), torch.randn(48, 32))
    assert layer.choice is None
