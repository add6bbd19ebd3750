"""Every strategy over hand-made snapshots, with exact expected orders (FLAT_COST: prefill 1 ms/token, decode 10 ms/loop)."""

import dataclasses
import math

import pytest

from sagellm.scheduler_ir import STRATEGIES, StrategyOptions, WaitingDecision, build_strategy
from sagellm.scheduler_ir.strategies.adaptive import busy_mode, is_busy
from tests.unit.scheduler_ir.conftest import FLAT_COST, running, snapshot, waiting


def test_registry_lists_every_strategy_and_rejects_unknown_names():
    assert STRATEGIES.names() == ("adaptive", "fair", "fifo", "priority", "slo_aware")
    with pytest.raises(KeyError, match=r"valid names: \['adaptive', 'fair', 'fifo', 'priority', 'slo_aware'\]"):
        build_strategy("lottery")


# ---------------------------------------------------------------- fifo


def test_fifo_keeps_the_engine_order_everywhere():
    fifo = build_strategy("fifo")
    snap = snapshot(waiting_seqs=[waiting(3), waiting(1), waiting(2)], running_seqs=[running(8), running(6)])
    assert fifo.stock is True
    assert fifo.plan_waiting(snap) == WaitingDecision(order=(3, 1, 2), note="fcfs")
    assert fifo.order_running(snap) == (8, 6)
    assert fifo.preempt(snap, (8, 6)) == 6
    assert fifo.choose_prefill(snap, True) is True and fifo.choose_prefill(snap, False) is False


# ---------------------------------------------------------------- priority


def priority_snapshot():
    return snapshot(
        now_s=100.0,
        waiting_seqs=[
            waiting(1, arrival_s=99.0, priority=0),   # effective -0.2
            waiting(2, arrival_s=80.0, priority=2),   # effective 2 - 20/5 = -2
            waiting(3, arrival_s=100.0, priority=1),  # effective 1
            waiting(4, arrival_s=99.0, priority=0),   # effective -0.2 (tie with 1: engine order)
        ],
        running_seqs=[running(5, arrival_s=90.0, priority=3), running(6, arrival_s=99.0, priority=0),
                      running(7, arrival_s=95.0, priority=1)],
    )


def test_priority_orders_by_aged_priority():
    strat = build_strategy("priority", StrategyOptions(aging_s=5.0))
    snap = priority_snapshot()
    assert strat.plan_waiting(snap).order == (2, 1, 4, 3)
    # running: 5 -> 3-2=1, 6 -> -0.2, 7 -> 1-1=0
    assert strat.order_running(snap) == (6, 7, 5)
    assert strat.preempt(snap, (6, 7, 5)) == 5


def test_priority_without_aging_is_strict():
    strat = build_strategy("priority", StrategyOptions(aging_s=0.0))
    assert strat.plan_waiting(priority_snapshot()).order == (1, 4, 3, 2)


def test_priority_aging_bounds_the_wait_of_a_low_priority_request():
    strat = build_strategy("priority", StrategyOptions(aging_s=2.0))
    old_low = waiting(1, arrival_s=0.0, priority=9)
    for now, expected in ((17.0, (2, 1)), (18.5, (1, 2))):  # 9 - now/2 vs 0 (fresh request)
        snap = snapshot(now_s=now, waiting_seqs=[old_low, waiting(2, arrival_s=now, priority=0)])
        assert strat.plan_waiting(snap).order == expected


def test_priority_preempts_the_newest_among_equals():
    strat = build_strategy("priority", StrategyOptions(aging_s=0.0))
    snap = snapshot(running_seqs=[running(1, priority=1), running(2, priority=1), running(3, priority=0)])
    assert strat.preempt(snap, (3, 1, 2)) == 2


# ---------------------------------------------------------------- slo_aware


def slo_snapshot(**kw):
    return snapshot(
        now_s=100.0,
        waiting_seqs=[
            waiting(1, arrival_s=99.9, pending=50, slo_ttft_ms=1000),   # slack 1000-100-50 = 850
            waiting(2, arrival_s=99.99, pending=20, slo_ttft_ms=200),   # slack 200-10-20 = 170
            waiting(3, arrival_s=99.0, pending=100),                    # no SLO: 10000-1000 = 9000
            waiting(4, arrival_s=99.5, pending=30, slo_ttft_ms=400),    # 500 ms waited + 30 > 400: hopeless
        ],
        **kw,
    )


def test_slo_aware_orders_by_ttft_slack_and_rejects_the_hopeless():
    strat = build_strategy("slo_aware")
    snap = slo_snapshot()
    assert [round(strat.ttft_slack_ms(snap, s)) for s in snap.waiting] == [850, 170, 9000, -130]
    decision = strat.plan_waiting(snap)
    assert decision.order == (2, 1, 3)
    assert decision.deferred == ()
    assert decision.rejected == {
        4: "slo_ttft_ms=400 cannot be met: waited 500 ms, first token at the soonest after 500 ms (30 prompt tokens)"
    }


def test_slo_aware_rejects_on_ttft_only_with_the_fastest_recent_prefill_rate():
    strat = build_strategy("slo_aware")
    # a line fitted on documents only: 170 ms for any short prompt; the fastest step ran 0.125 ms/token
    skewed = dataclasses.replace(FLAT_COST, prefill_fixed_ms=170.0, prefill_ms_per_token=0.01,
                                 prefill_floor_ms_per_token=0.125)
    fresh = waiting(1, arrival_s=99.997, pending=80, slo_ttft_ms=102.4)   # 3 + 10 ms: not certain to miss
    stale = waiting(2, arrival_s=99.9, pending=80, slo_ttft_ms=102.4)     # 100 + 10 ms > 102.4
    decision = strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[fresh, stale], cost=skewed, inflight_ms=150.0))
    assert decision.order == (1,)
    assert decision.rejected == {
        2: "slo_ttft_ms=102.4 cannot be met: waited 100 ms, first token at the soonest after 110 ms (80 prompt tokens)"
    }


def test_slo_aware_never_rejects_a_prompt_whose_prefill_is_under_way():
    strat = build_strategy("slo_aware")
    # 7 tokens left of a document whose earlier chunks ran; it waited 600 ms of a 565 ms target
    snap = snapshot(now_s=100.0, waiting_seqs=[
        waiting(1, arrival_s=99.4, computed_tokens=1344, num_blocks=21, pending=7, slo_ttft_ms=565),
        waiting(2, arrival_s=99.4, pending=7, slo_ttft_ms=565),
    ])
    decision = strat.plan_waiting(snap)
    assert decision.order == (1,)
    assert list(decision.rejected) == [2]


def test_slo_aware_serves_a_request_late_when_only_the_queue_makes_it_miss():
    strat = build_strategy("slo_aware", StrategyOptions(chunk_tokens=0))
    snap = snapshot(
        now_s=10.0,
        waiting_seqs=[
            waiting(1, arrival_s=10.0, pending=300, slo_ttft_ms=350),  # slack 50
            waiting(2, arrival_s=10.0, pending=100, slo_ttft_ms=360),  # slack 260; with 1: one 400 ms step
            waiting(3, arrival_s=10.0, pending=50, slo_ttft_ms=400),   # slack 350; with 1: 350 ms, both in time
        ],
    )
    decision = strat.plan_waiting(snap)
    # 2 alone would make it (100 <= 360): not rejected, but it goes behind 3, which still can; in
    # the same step it would make 1 miss (450 > 350) and miss itself: held back to the next step
    assert (decision.order, decision.deferred) == ((1, 3), (2,))
    assert decision.rejected == {}
    assert decision.note == "edf, 1 late, 1 held"


def test_slo_aware_first_token_simulates_split_steps_and_decode_rounds():
    strat = build_strategy("slo_aware")
    # 4 running sequences: a decode round is 16 loops x 10 ms = 160 ms between prefill steps
    snap = snapshot(now_s=100.0, inflight_ms=5.0,
                    running_seqs=[running(i, first_token_s=99.0) for i in (7, 8, 9, 10)],
                    waiting_seqs=[waiting(1, arrival_s=100.0, pending=1000), waiting(2, arrival_s=100.0, pending=40),
                                  waiting(3, arrival_s=100.0, pending=300, chunkable=False)])
    seqs = list(snap.waiting)
    # budget 400: step 1 = 256 of 1 + 40 of 2 (296 ms), 3 does not fit whole and waits;
    # step 2 = 256 of 1 (3 still does not fit); step 3 = 256 of 1; step 4 = last 232 of 1 + ... 3 after
    times = strat.first_token_ms(snap, seqs, budget=400, limits={1: 256})
    assert times[2] == pytest.approx(5.0 + 296.0)
    assert times[1] == pytest.approx(5.0 + 296 + 160 + 256 + 160 + 256 + 160 + 232)
    assert times[3] == pytest.approx(times[1] + 160 + 300)
    # first in order, the unsplittable prompt runs in step 1 with a 100-token chunk of 1 (400 ms)
    assert strat.first_token_ms(snap, [seqs[2], seqs[0], seqs[1]], budget=400, limits={1: 256})[3] == pytest.approx(405.0)


def test_slo_aware_defer_mode_holds_back_then_serves_then_rejects_after_max_defer():
    strat = build_strategy("slo_aware", StrategyOptions(on_unattainable="defer", max_defer_s=30.0))
    decision = strat.plan_waiting(slo_snapshot())
    assert (decision.order, decision.deferred, decision.rejected) == ((2, 1, 3), (4,), {})
    alone = snapshot(now_s=100.0, waiting_seqs=[waiting(4, arrival_s=99.5, pending=30, slo_ttft_ms=400)])
    assert strat.plan_waiting(alone).order == (4,)  # nothing attainable waits: do not idle
    too_old = snapshot(now_s=100.0, waiting_seqs=[waiting(4, arrival_s=60.0, pending=30, slo_ttft_ms=400)])
    assert list(strat.plan_waiting(too_old).rejected) == [4]


def test_slo_aware_rejects_a_tpot_target_below_the_fastest_recent_decode():
    strat = build_strategy("slo_aware")
    seqs = [waiting(1, arrival_s=100.0, slo_tpot_ms=5.0), waiting(2, arrival_s=100.0, slo_tpot_ms=50.0)]
    floor = dataclasses.replace(FLAT_COST, decode_floor_ms=6.0)
    decision = strat.plan_waiting(snapshot(waiting_seqs=seqs, cost=floor))
    assert decision.order == (2,)
    assert decision.rejected == {
        1: "slo_tpot_ms=5 is below the engine's fastest recent decode time per token (about 6.0 ms)"
    }
    # no decode seen yet (floor 0): nothing is known to be impossible
    assert strat.plan_waiting(snapshot(waiting_seqs=seqs)).order == (1, 2)


def test_slo_aware_resumes_preempted_requests_first():
    strat = build_strategy("slo_aware")
    snap = snapshot(now_s=100.0, waiting_seqs=[waiting(1, arrival_s=100.0, slo_ttft_ms=50),
                                              waiting(2, arrival_s=90.0, generated_tokens=5, pending=40)])
    assert strat.plan_waiting(snap).order == (2, 1)


def test_slo_aware_continues_started_prefills_first_only_under_block_pressure():
    strat = build_strategy("slo_aware")
    seqs = [
        waiting(1, arrival_s=100.0, slo_ttft_ms=5000),                                        # tightest, fresh
        waiting(2, arrival_s=99.0, computed_tokens=64, num_blocks=4, pending=100, slo_ttft_ms=60_000),
        waiting(3, arrival_s=98.0, computed_tokens=32, num_blocks=2, pending=100, slo_ttft_ms=90_000),
        waiting(4, arrival_s=97.0, computed_tokens=64, num_blocks=0, pending=100, slo_ttft_ms=90_000),  # evicted
    ]
    # 16-token blocks: the prompts need 1 + 7 + 7 + 11 = 26 more blocks
    scarce = snapshot(now_s=100.0, waiting_seqs=seqs, free_blocks=25, total_blocks=64)
    assert strat.plan_waiting(scarce).order == (2, 3, 1, 4)
    plenty = snapshot(now_s=100.0, waiting_seqs=seqs, free_blocks=26, total_blocks=64)
    assert strat.plan_waiting(plenty).order == (1, 2, 4, 3)


def tpot_snapshot(waiting_seqs=()):
    # running 9: 21 tokens, first one 1000 ms ago, 50 ms/token target, next step 16 loops of 10 ms:
    #   slack = 50 * (20 + 16) - 1000 - 160 = 640 ms; running 8 has no TPOT target (infinite slack)
    return snapshot(
        now_s=100.0,
        waiting_seqs=waiting_seqs,
        running_seqs=[running(8, first_token_s=90.0, generated=50),
                      running(9, first_token_s=99.0, generated=21, slo_tpot_ms=50.0)],
    )


def test_slo_aware_chunks_long_prompts_and_sizes_the_step_to_the_tpot_slack():
    strat = build_strategy("slo_aware", StrategyOptions(chunk_tokens=256))
    snap = tpot_snapshot([waiting(1, arrival_s=100.0, pending=1000), waiting(2, arrival_s=100.0, pending=40),
                          waiting(3, arrival_s=100.0, pending=2000, chunkable=False)])
    # 50 ms x 0.9 (the default 10 % reserve) x (20 + 16) - 1000 ms since the first token - 16 x 10 ms
    assert strat.tpot_slack_ms(snap, snap.running[1]) == pytest.approx(460.0)
    assert math.isinf(strat.tpot_slack_ms(snap, snap.running[0]))
    decision = strat.plan_waiting(snap)
    assert decision.order == (1, 2, 3)  # no TTFT targets: first come, first served
    assert decision.chunk_limits == {1: 256}
    assert decision.step_token_budget == 460


def test_slo_aware_tpot_slack_counts_only_the_tokens_left():
    strat = build_strategy("slo_aware")
    # 31 of 32 tokens out, 240 ms since the first (8 ms each against a 20 ms target), 10 ms loops:
    # one token is left, so the allowance is 20 x 31 = 620 ms, not 20 x (30 + 16) for a whole round
    # (less the 10 % reserve)
    last = running(9, first_token_s=99.76, generated=31, max_new_tokens=32, slo_tpot_ms=20.0)
    prompt = waiting(1, arrival_s=100.0, pending=400, slo_ttft_ms=5000, chunkable=False)
    snap = snapshot(now_s=100.0, waiting_seqs=[prompt], running_seqs=[last])
    assert strat.tpot_slack_ms(snap, last) == pytest.approx(0.9 * 620.0 - 240.0 - 10.0)
    # a 400 ms prefill now would make it miss; the prompt's TTFT can wait a round
    assert strat.choose_prefill(snap, True) is False
    far = running(9, first_token_s=99.76, generated=31, max_new_tokens=512, slo_tpot_ms=20.0)
    assert strat.tpot_slack_ms(dataclasses.replace(snap, running=(far,)), far) == pytest.approx(
        0.9 * 20.0 * 46 - 240.0 - 160.0)


def test_slo_aware_orders_running_by_tpot_slack_and_preempts_the_most_relaxed():
    strat = build_strategy("slo_aware")
    snap = tpot_snapshot()
    assert strat.order_running(snap) == (9, 8)
    assert strat.preempt(snap, (9, 8)) == 8


def test_slo_aware_prefill_or_decode():
    strat = build_strategy("slo_aware", StrategyOptions(chunk_tokens=256))
    # a 1000-token prompt with a relaxed target: a 256-token chunk (256 ms) fits the 640 ms stall budget
    relaxed = tpot_snapshot([waiting(1, arrival_s=100.0, pending=1000, slo_ttft_ms=5000)])
    assert strat.choose_prefill(relaxed, True) is True
    # an unsplittable 1000-token prompt would stall running 9 past its TPOT target; its TTFT can wait
    unsplittable = tpot_snapshot([waiting(1, arrival_s=100.0, pending=1000, slo_ttft_ms=5000, chunkable=False)])
    assert strat.choose_prefill(unsplittable, True) is False
    # ... unless its own TTFT cannot wait one decode step (160 ms)
    urgent = tpot_snapshot([waiting(1, arrival_s=100.0, pending=1000, slo_ttft_ms=1100, chunkable=False)])
    assert strat.choose_prefill(urgent, True) is True
    # the engine would decode, but a waiting request's TTFT slack is below one decode step
    assert strat.choose_prefill(urgent, False) is True
    assert strat.choose_prefill(relaxed, False) is False


def test_slo_aware_holds_back_a_document_that_would_make_the_step_miss_targets_it_can_meet():
    strat = build_strategy("slo_aware")
    # FLAT_COST: prefill 1 ms/token; a decode round is 16 x 10 ms = 160 ms
    interactive = waiting(1, arrival_s=100.0, pending=80, slo_ttft_ms=100)
    document = waiting(2, arrival_s=99.99, pending=1500, slo_ttft_ms=2000)
    decision = strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[document, interactive]))
    # packed with the document the interactive prompt's first token comes after 1580 ms, not 80;
    # the document can wait: 10 + 80 + 160 + 1500 = 1750 <= 2000
    assert (decision.order, decision.deferred, decision.note) == ((1,), (2,), "edf, 1 late, 1 held")
    # a document that cannot wait one more step goes in the same step
    tight = dataclasses.replace(document, slo_ttft_ms=1700)
    assert strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[tight, interactive])).order == (1, 2)
    # a document that misses its target even in this step is held back too: it only costs the others
    lost = dataclasses.replace(document, slo_ttft_ms=1560)  # alone in time (1510), with the other not (1590)
    assert strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[lost, interactive])).deferred == (2,)
    # ... for at most max_defer_s (30 s), then it is served late, in the same step
    old_lost = dataclasses.replace(lost, arrival_s=69.0, slo_ttft_ms=32_540)  # waited 31 s; 31000 + 1580 > 32540
    assert strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[old_lost, interactive])).order == (1, 2)
    # a prompt without a TTFT target (10 s by default) is not hurt by the wait: one step for both
    relaxed = dataclasses.replace(interactive, slo_ttft_ms=None)
    assert strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[document, relaxed])).order == (2, 1)
    # alone, the document is never held back (choose_prefill decides whether to prefill at all)
    assert strat.plan_waiting(snapshot(now_s=100.0, waiting_seqs=[document])).order == (2,)


def test_slo_aware_holds_back_a_prompt_that_would_stall_a_running_request_past_its_tpot():
    strat = build_strategy("slo_aware")
    # running 9's slack is 640 ms (tpot_snapshot); two 400-token prompts without TTFT targets
    first, second = waiting(1, arrival_s=100.0, pending=400), waiting(2, arrival_s=100.0, pending=400)
    decision = strat.plan_waiting(tpot_snapshot([first, second]))
    assert (decision.order, decision.deferred) == ((1,), (2,))  # 800 ms of prefill > 640 ms of slack


def test_slo_aware_does_not_protect_a_running_request_that_misses_its_tpot_anyway():
    strat = build_strategy("slo_aware")
    # 32 tokens at 10 ms/token target; 21 generated, first token 500 ms ago: 500 + 11 x 10 > 310
    lost = running(9, first_token_s=99.5, generated=21, slo_tpot_ms=10.0, max_new_tokens=32)
    ok = running(8, first_token_s=99.9, generated=5, slo_tpot_ms=30.0, max_new_tokens=32)
    snap = snapshot(now_s=100.0, running_seqs=[lost, ok])
    assert strat.tpot_lost(snap, lost) is True and strat.tpot_lost(snap, ok) is False
    # only 8 counts: 30 * 0.9 * (4 + 16) - 100 - 160
    assert strat.stall_budget_ms(snap) == pytest.approx(280.0)


def test_slo_aware_keeps_a_share_of_each_tpot_allowance_in_reserve():
    # 27 of 32 tokens out, the first 125 ms ago, 20 ms target, 10 ms loops: 5 loops left
    seq = running(9, first_token_s=99.875, generated=27, max_new_tokens=32, slo_tpot_ms=20.0)
    document = waiting(1, arrival_s=100.0, pending=400, slo_ttft_ms=5000)
    snap = snapshot(now_s=100.0, waiting_seqs=[document], running_seqs=[seq])
    to_the_limit = build_strategy("slo_aware", StrategyOptions(chunk_tokens=128, tpot_reserve=0.0))
    reserved = build_strategy("slo_aware", StrategyOptions(chunk_tokens=128, tpot_reserve=0.2))
    assert to_the_limit.stall_budget_ms(snap) == pytest.approx(20.0 * 31 - 125.0 - 50.0)  # 445
    assert reserved.stall_budget_ms(snap) == pytest.approx(0.8 * 20.0 * 31 - 125.0 - 50.0)  # 321
    # the step is sized to the stall budget (1 ms per token)
    assert to_the_limit.plan_waiting(snap).step_token_budget == 445
    assert reserved.plan_waiting(snap).step_token_budget == 321
    # two chunks later (375 ms since the first token) a third 128-token chunk fits only without the reserve
    later = dataclasses.replace(snap, now_s=100.25)
    assert to_the_limit.choose_prefill(later, True) is True  # 195 ms left
    assert reserved.choose_prefill(later, True) is False  # 71 ms left: decode first


# ---------------------------------------------------------------- fair


def fair_snapshot():
    return snapshot(
        waiting_seqs=[waiting(1, tenant="a", pending=10), waiting(2, tenant="b", pending=10),
                      waiting(3, tenant="b", pending=10), waiting(4, pending=50)],
        running_seqs=[running(10, tenant="a", computed=99), running(11, tenant="b", computed=29),
                      running(12, tenant="b", computed=0)],
    )


def test_fair_admits_to_the_tenant_with_the_smallest_weighted_share():
    strat = build_strategy("fair", StrategyOptions(tenant_weights={"a": 2.0}))
    snap = fair_snapshot()
    # held: a 100 (weight 2 -> 50), b 30 + 1 = 31, anonymous 0
    assert strat.usage(snap) == {"": 0.0, "a": 100.0, "b": 31.0}
    # 4 (anon 0 -> 50), 2 (b 31 -> 41), 3 (b 41 -> 51), 1 (a 50)
    assert strat.plan_waiting(snap).order == (4, 2, 3, 1)
    assert strat.order_running(snap) == (11, 12, 10)
    assert strat.preempt(snap, (11, 12, 10)) == 10


def test_fair_with_equal_weights():
    strat = build_strategy("fair")
    snap = fair_snapshot()
    assert strat.plan_waiting(snap).order == (4, 2, 3, 1)  # a: 100, b: 31 -> 41 -> 51, anon: 0 -> 50
    assert strat.preempt(snap, (11, 12, 10)) == 10


# ---------------------------------------------------------------- adaptive


def test_adaptive_load_state_has_hysteresis():
    calm = snapshot(waiting_seqs=[waiting(1, pending=100)])
    middle = snapshot(waiting_seqs=[waiting(1, pending=100), waiting(2, pending=100)])
    busy = snapshot(waiting_seqs=[waiting(i, pending=10) for i in range(4)])
    assert is_busy(busy, False) is True
    assert is_busy(middle, True) is True and is_busy(middle, False) is False
    assert is_busy(calm, True) is False


def test_adaptive_busy_mode_picks_the_strategy_the_requests_need():
    assert busy_mode(snapshot(waiting_seqs=[waiting(1, slo_tpot_ms=20.0), waiting(2, tenant="x")])) == "slo_aware"
    assert busy_mode(snapshot(waiting_seqs=[waiting(1, tenant="x"), waiting(2, tenant="y")])) == "fair"
    assert busy_mode(snapshot(waiting_seqs=[waiting(1, priority=2), waiting(2)])) == "priority"
    assert busy_mode(snapshot(waiting_seqs=[waiting(1), waiting(2)])) == "fifo"


def test_adaptive_switches_by_load():
    strat = build_strategy("adaptive")
    calm = snapshot(step_id=1, waiting_seqs=[waiting(1, arrival_s=99.0, pending=20), waiting(2, arrival_s=99.9, slo_ttft_ms=5000)])
    assert strat.plan_waiting(calm).order == (1, 2) and strat.mode == "fifo"
    busy = snapshot(step_id=2, waiting_seqs=[waiting(1, arrival_s=99.0, pending=20), waiting(2, arrival_s=99.9, slo_ttft_ms=500),
                                             waiting(3, arrival_s=99.9), waiting(4, arrival_s=99.9)])
    decision = strat.plan_waiting(busy)
    assert strat.mode == "slo_aware" and decision.order == (2, 1, 3, 4)
    assert decision.note == "adaptive:slo_aware:edf"
    assert strat.describe() == "adaptive(slo_aware)"


# decode pacing: 4 ms per loop + 1 ms per sequence + 0.002 ms per history token, 4-loop rounds
PACING_COST = dataclasses.replace(FLAT_COST, decode_fixed_ms=4.0, decode_ms_per_seq=1.0, decode_ms_per_kv_token=0.002)


def pacing_snapshot(doc_first_token_ago_s: float = 0.010, chat_tpot_ms: float = 10.0, chats: int = 2):
    now = 100.0
    chat = [running(i, computed=100, generated=2, max_new_tokens=32, slo_tpot_ms=chat_tpot_ms, first_token_s=now - 0.010)
            for i in range(1, chats + 1)]
    doc = running(9, computed=1500, generated=2, max_new_tokens=32, slo_tpot_ms=21.0, first_token_s=now - doc_first_token_ago_s)
    return snapshot(now_s=now, running_seqs=[*chat, doc], cost=PACING_COST, decode_loops=4)


def test_slo_aware_holds_a_document_out_of_a_round_its_history_would_make_chats_miss_their_tpot():
    slo = build_strategy("slo_aware", StrategyOptions(decode_pacing=True))
    # 3 sequences, 1703 history tokens: 10.406 ms per loop; a chat's 30 tokens left then take 312.2 ms
    # of its 31 x 10 = 310 ms allowance less the 10 ms it already used: at risk. Without the document:
    # 6.404 ms per loop. The document waits 4 x 6.404 ms and still has 651 - 10 - 25.6 - 312.2 ms to spare.
    assert slo.hold_from_round(pacing_snapshot()) == frozenset({9})


def test_slo_aware_keeps_everyone_when_no_target_is_at_risk_or_nobody_can_wait():
    slo = build_strategy("slo_aware", StrategyOptions(decode_pacing=True))
    assert slo.hold_from_round(pacing_snapshot(chats=1)) == frozenset()  # 9.204 ms per loop: 23.9 ms to spare
    # the document itself used up its allowance: 651 - 350 - 25.6 - 312.2 < 0
    assert slo.hold_from_round(pacing_snapshot(doc_first_token_ago_s=0.350)) == frozenset()
    # off by default
    off = build_strategy("slo_aware")
    assert off.hold_from_round(pacing_snapshot()) == frozenset()


def test_slo_aware_does_not_pace_for_a_chat_that_misses_anyway_or_hold_requests_without_a_tpot_target():
    slo = build_strategy("slo_aware", StrategyOptions(decode_pacing=True))
    # a 5 ms TPOT target: 10 + 30 x 5 ms (the fastest loop) > 155 ms allowance -- lost, so not protected
    assert slo.hold_from_round(pacing_snapshot(chat_tpot_ms=5.0)) == frozenset()
    snap = pacing_snapshot()
    no_target = dataclasses.replace(snap.running[-1], slo_tpot_ms=None)
    assert slo.hold_from_round(dataclasses.replace(snap, running=snap.running[:-1] + (no_target,))) == frozenset()
