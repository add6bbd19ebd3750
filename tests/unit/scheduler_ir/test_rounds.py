import pytest

from sagellm.scheduler_ir import RoundCut, RoundProgress, build_strategy, round_cut


def progress(loops_done=4, loops=16, batch=8, finished=0, waiting=0, max_batch=64):
    return RoundProgress(loops_done=loops_done, loops=loops, batch=batch, finished=finished, waiting=waiting,
                         max_batch=max_batch)


def test_derived_counts():
    p = progress(loops_done=5, batch=8, finished=3, max_batch=10)
    assert (p.live, p.loops_left, p.room) == (5, 11, 5)


@pytest.mark.parametrize("p, expected", [
    (progress(batch=1, finished=1), RoundCut.ALL_FINISHED),  # concurrency 1: the request is done
    (progress(batch=8, finished=8, waiting=3), RoundCut.ALL_FINISHED),
    (progress(batch=8, finished=7), None),  # nobody to take the finished slots
    (progress(loops_done=16, batch=1, finished=1), None),  # the round ends anyway
    (progress(loops_done=8, batch=8, waiting=1), RoundCut.ADMIT_WAITING),  # 1 x 8 loops saved >= 8 live
    (progress(loops_done=9, batch=8, waiting=1), None),  # 1 x 7 < 8
    (progress(loops_done=9, batch=8, waiting=2), RoundCut.ADMIT_WAITING),  # 2 x 7 >= 8
    (progress(loops_done=9, batch=8, finished=1, waiting=1), RoundCut.ADMIT_WAITING),  # 1 x 7 >= 7 live
    (progress(loops_done=2, batch=32, waiting=1), None),  # 1 x 14 < 32: the prefill stall costs more
    (progress(loops_done=2, batch=32, waiting=3), RoundCut.ADMIT_WAITING),  # 3 x 14 >= 32
    (progress(loops_done=2, batch=8, waiting=5, max_batch=8), None),  # full batch: no room
    (progress(loops_done=2, batch=8, finished=1, waiting=5, max_batch=8), RoundCut.ADMIT_WAITING),  # 1 fits: 14 >= 7
])
def test_default_policy(p, expected):
    assert round_cut(p) is expected


def test_an_empty_round_is_never_cut():
    assert round_cut(progress(batch=0, waiting=4)) is None


@pytest.mark.parametrize("name", ["fifo", "priority", "fair", "adaptive"])
def test_throughput_strategies_use_the_default_policy(name):
    strategy = build_strategy(name)
    assert strategy.cut_round(progress(loops_done=2, batch=32, waiting=1)) is None
    assert strategy.cut_round(progress(batch=2, finished=2)) is RoundCut.ALL_FINISHED


def test_slo_aware_ends_the_round_for_any_request_that_fits():
    strategy = build_strategy("slo_aware")
    assert strategy.cut_round(progress(loops_done=2, batch=32, waiting=1)) is RoundCut.ADMIT_WAITING
    assert strategy.cut_round(progress(loops_done=15, batch=32, waiting=1)) is RoundCut.ADMIT_WAITING
    assert strategy.cut_round(progress(loops_done=16, batch=32, waiting=1)) is None
    assert strategy.cut_round(progress(batch=8, waiting=1, max_batch=8)) is None
    assert strategy.cut_round(progress(batch=3, finished=3)) is RoundCut.ALL_FINISHED
