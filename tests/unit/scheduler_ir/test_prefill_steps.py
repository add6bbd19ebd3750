import pytest

from sagellm.scheduler_ir import CostEstimate, prefill_batch_size

# as fitted on the 2-core CPU (tiny model): 7 ms per prefill step plus 0.15 ms per token
CPU = CostEstimate(prefill_fixed_ms=7.0, prefill_ms_per_token=0.15, prefill_floor_ms_per_token=0.12)
# a GPU-like step: mostly fixed cost
GPU = CostEstimate(prefill_fixed_ms=20.0, prefill_ms_per_token=0.01, prefill_floor_ms_per_token=0.01)


@pytest.mark.parametrize("pending, running, cost, expected", [
    ([370, 350, 376], 0, CPU, 1),  # 1 x 52.5 ms >= 7 x (1 + 1 behind): the second waits for its own step
    ([40, 30], 0, CPU, 2),  # 1 x 4.5 < 7 x 1: one step for both
    ([160, 160], 24, CPU, 2),  # under load: 24 < 7 x (1 + 24 running)
    ([50, 60, 1500], 2, CPU, 2),  # 9 < 28 takes the second; 2 x 225 >= 21 leaves the document
    ([200, 200, 200, 200], 0, GPU, 4),  # 2, 4, 6 < 60, 40, 20
    ([500], 0, CPU, 1),
    ([], 0, CPU, 0),
])
def test_split_when_the_delay_to_the_admitted_outweighs_a_step(pending, running, cost, expected):
    assert prefill_batch_size(pending, running, cost) == expected


@pytest.mark.parametrize("cost", [
    CostEstimate(prefill_fixed_ms=7.0, prefill_ms_per_token=0.15),  # no prefill observed yet
    CostEstimate(prefill_fixed_ms=0.0, prefill_ms_per_token=0.15, prefill_floor_ms_per_token=0.12),
])
def test_the_engine_batches_until_the_model_knows_a_fixed_cost(cost):
    assert prefill_batch_size([370, 350, 376], 0, cost) == 3
