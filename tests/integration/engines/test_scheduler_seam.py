"""Patch 0004's seam on LMDeploy's real Scheduler, block manager and prefix trie (no model).

Step outputs are simulated the way the engine produces them: ``lock_running`` ->
``before_step_outputs`` -> ``update_token_ids`` -> ``unlock_running``. The engine object that
receives a refusal is a stand-in that records ``_response`` calls.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np
import pytest
from lmdeploy.messages import ResponseType
from lmdeploy.pytorch.config import CacheConfig, SchedulerConfig
from lmdeploy.pytorch.messages import MessageStatus, SequenceMeta, UpdateTokenMode
from lmdeploy.pytorch.paging.hooks import get_kv_hooks, set_kv_hooks
from lmdeploy.pytorch.paging.scheduler import Scheduler
from lmdeploy.pytorch.sched_hooks import SchedulerHooks, get_sched_hooks, set_sched_hooks
from lmdeploy.pytorch.strategies.ar.sequence import ARSequenceStrategy

from sagellm.core.request import RequestMetadata
from sagellm.engines.lmdeploy.scheduling import SYNCHRONOUS_YIELDS, SagellmSchedulerHooks, yield_until_idle
from sagellm.engines.lmdeploy.scheduling_api import REJECT_MARKER
from sagellm.scheduler_ir import SchedulerConfig as SagellmSchedulerConfig
from sagellm.scheduler_ir import RoundCut, read_records
from sagellm.scheduler_ir.strategies.fifo import FifoStrategy

BLOCK = 4


def make_scheduler(num_blocks=32, budget=4096, prefix_caching=True) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_batches=8, max_session_len=256),
        CacheConfig(max_batches=8, block_size=BLOCK, num_cpu_blocks=0, num_gpu_blocks=num_blocks,
                    max_prefill_token_num=budget, enable_prefix_caching=prefix_caching, device_type="cpu"),
        seq_meta=SequenceMeta(BLOCK, strategy=ARSequenceStrategy()),
    )


class RecordingEngine(SimpleNamespace):
    """Stand-in for lmdeploy's Engine: records the responses a hook sends."""

    def __init__(self, device_type="cpu"):
        super().__init__(responses=[], engine_config=SimpleNamespace(device_type=device_type))

    def _response(self, resp, resp_type, data=None, err_msg=""):
        self.responses.append((resp, resp_type, err_msg))


def install(scheduler_name="fifo", **options):
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig(scheduler=scheduler_name, **options))
    hooks.attach(RecordingEngine())
    set_sched_hooks(hooks)
    return hooks


@pytest.fixture(autouse=True)
def restore_hooks():
    previous, previous_kv = get_sched_hooks(), get_kv_hooks()
    set_kv_hooks(None)  # KV-tier hooks an engine in this process installed would see foreign block sizes
    yield
    set_sched_hooks(previous)
    set_kv_hooks(previous_kv)


@pytest.fixture
def recorded_metrics(monkeypatch):
    """The adapter's metrics, recorded into a registry of the test's own."""
    from prometheus_client import CollectorRegistry

    from sagellm.engines.lmdeploy import scheduling
    from sagellm.telemetry import SageMetrics

    registry = CollectorRegistry()
    monkeypatch.setattr(scheduling, "metrics", SageMetrics(registry))
    return lambda name, **labels: registry.get_sample_value(name, labels)


def add(scheduler, session_id, tokens, **meta):
    session = scheduler.add_session(session_id)
    seq = session.add_sequence(np.array(tokens), sampling_param=None)
    if meta:
        seq.request_metadata = RequestMetadata(request_id=f"req-{session_id}", **meta).to_dict()
    seq.resp = SimpleNamespace(type=ResponseType.SUCCESS, name=f"resp-{session_id}")
    scheduler.add_sequence(seq)
    time.sleep(0.002)  # distinct arrival times
    return seq


def step_outputs(scheduler, running, is_decoding, token=7):
    """What the engine does when a step's outputs arrive."""
    scheduler.lock_running(running)
    get_sched_hooks().before_step_outputs(scheduler, running, is_decoding)
    mode = UpdateTokenMode.DECODE if is_decoding else UpdateTokenMode.PREFILL
    for seq in running:
        if seq.status == MessageStatus.LOCKED:
            seq.update_token_ids(np.array([token]), mode=mode)
    scheduler.unlock_running(running)


def sessions(seqs):
    return [seq.session_id for seq in seqs]


def preemption_scenario(priorities=(0, 0, 0)):
    """Three 8-token sequences fill 6 blocks; each decoded token needs a 7th block: one must give way."""
    scheduler = make_scheduler(num_blocks=6)
    seqs = [add(scheduler, i, list(range(10 * i, 10 * i + 8)), priority=p) for i, p in enumerate(priorities)]
    out = scheduler.schedule(is_prefill=True)
    assert sorted(sessions(out.running)) == [0, 1, 2]
    step_outputs(scheduler, out.running, is_decoding=False)
    out = scheduler.schedule(is_prefill=False)
    return scheduler, seqs, out


@pytest.mark.parametrize("variant", ["default", "fifo", "fifo+trace"])
def test_stock_and_fifo_agree_on_order_and_victim(variant, tmp_path):
    if variant == "fifo":
        install("fifo")
    elif variant == "fifo+trace":
        hooks = install("fifo", sched_trace=str(tmp_path / "t.jsonl"))
        assert not hooks.passthrough
    else:
        set_sched_hooks(None)
        assert type(get_sched_hooks()) is SchedulerHooks
    scheduler, seqs, out = preemption_scenario()
    assert sessions(out.running) == [0, 1]  # the newest, 2, was preempted
    assert seqs[2].status == MessageStatus.WAITING
    if variant == "fifo+trace":
        kinds = [(r["kind"], r["order"]) for r in read_records(tmp_path / "t.jsonl")]
        assert kinds == [("prefill", [s.seq_id for s in seqs]), ("decode", [s.seq_id for s in seqs])]


def test_priority_reorders_running_and_preempts_the_worst():
    install("priority", sched_aging_s=0.0)
    scheduler, seqs, out = preemption_scenario(priorities=(5, 0, 1))
    assert sessions(out.running) == [1, 2]
    assert seqs[0].status == MessageStatus.WAITING


def test_priority_reorders_admission_under_the_token_budget():
    install("priority", sched_aging_s=0.0)
    scheduler = make_scheduler(budget=8)
    for session_id, priority in ((0, 3), (1, 1), (2, -2)):
        add(scheduler, session_id, list(range(8)), priority=priority)
    order = []
    for _ in range(3):
        out = scheduler.schedule(is_prefill=True)
        order += sessions(out.running)
        step_outputs(scheduler, out.running, is_decoding=False)
    assert order == [2, 1, 0]


def test_without_the_plugin_admission_is_first_come_first_served():
    set_sched_hooks(None)
    scheduler = make_scheduler(budget=8)
    for session_id, priority in ((0, 3), (1, 1), (2, -2)):
        add(scheduler, session_id, list(range(8)), priority=priority)
    assert sessions(scheduler.schedule(is_prefill=True).running) == [0]


def test_long_prompt_is_prefilled_in_block_aligned_chunks_without_emitting_tokens():
    hooks = install("slo_aware", sched_chunk_tokens=8)
    scheduler = make_scheduler()
    prompt = list(range(100, 120))  # 20 tokens: chunks [0, 8), [8, 16), [16, 20)
    seq = add(scheduler, 0, prompt, slo_ttft_ms=60_000)
    seen = []
    for _ in range(3):
        out = scheduler.schedule(is_prefill=True)
        assert out.running == [seq]
        seen.append((seq.num_history_ids, seq.num_token_ids))
        step_outputs(scheduler, out.running, is_decoding=False)
    assert seen == [(0, 8), (8, 8), (16, 4)]
    # after the chunks nothing was emitted; after the last one the sampled token is there
    assert seq.num_new_tokens == 1 and seq.status == MessageStatus.RUNNING
    assert seq.history_cache.get_real().tolist() == prompt + [7]
    assert seq.num_blocks == 5  # the 20 prompt tokens; the sampled one gets its block at the next decode step
    assert seq.seq_id in hooks._first_token_s
    # the chunks' full blocks went into the prefix trie as they were computed
    trie_tokens = []
    node = scheduler.block_trie.get_root(seq.adapter_name)
    while node.children:
        node = next(iter(node.children.values()))
        trie_tokens += node.tokens.tolist()
    assert trie_tokens == prompt[:16]


def test_a_cancelled_chunk_leaves_the_sequence_whole():
    install("slo_aware", sched_chunk_tokens=8)
    scheduler = make_scheduler()
    seq = add(scheduler, 0, list(range(20)), slo_ttft_ms=60_000)
    out = scheduler.schedule(is_prefill=True)
    assert seq.num_token_ids == 8
    scheduler.stop_session(0)  # cancelled while its chunk runs: not LOCKED when outputs arrive
    get_sched_hooks().before_step_outputs(scheduler, out.running, False)
    assert (seq.num_history_ids, seq.num_token_ids, seq.status) == (0, 20, MessageStatus.STOPPED)
    assert seq.history_cache.get_real().tolist() == list(range(20))


def test_a_cut_that_was_not_admitted_is_undone_next_step():
    hooks = install("slo_aware", sched_chunk_tokens=8)
    scheduler = make_scheduler()
    seq = add(scheduler, 0, list(range(20)), slo_ttft_ms=60_000)
    hooks._chunk_ends, hooks._candidates = {seq.seq_id: 8}, {seq.seq_id}
    assert hooks.stop_admission(scheduler, seq) is False  # cut, but (say) eviction failed: it stays waiting
    assert seq.num_token_ids == 8 and seq.status == MessageStatus.WAITING
    hooks.order_waiting(scheduler, [seq])
    assert seq.num_token_ids == 20
    assert seq.history_cache.get_real().tolist() == list(range(20))


def test_an_unattainable_request_ends_with_the_reason_and_leaves_the_queue(recorded_metrics):
    hooks = install("slo_aware")
    scheduler = make_scheduler()
    late = add(scheduler, 0, list(range(8)), slo_ttft_ms=50.0)
    late.request_metadata["arrival_time"] = time.time() - 10.0  # it waited 10 s already
    ok = add(scheduler, 1, list(range(8)), slo_ttft_ms=60_000.0)
    out = scheduler.schedule(is_prefill=True)
    assert out.running == [ok]
    assert late.status == MessageStatus.STOPPED
    [(resp, resp_type, err_msg)] = hooks.engine.responses
    assert resp is late.resp and resp_type is ResponseType.INTERNAL_ENGINE_ERROR
    assert err_msg.startswith(f"{REJECT_MARKER} the slo_aware scheduler rejected the request: slo_ttft_ms=50 cannot be met")
    assert hooks.rejected == 1
    assert recorded_metrics("sagellm_scheduler_events_total", event="rejected") == 1
    assert scheduler.schedule(is_prefill=True).running == []  # nothing left waiting


def test_a_late_prompt_under_way_yields_its_blocks_to_an_attainable_one_and_is_not_turned_away():
    """A started prefill that can no longer meet its TTFT is served late, behind what can still be on time.

    It stays in LMDeploy's waiting list after the attainable request, so its cached chunk is evictable
    when the attainable one needs the room; it is neither rejected nor deferred (its earlier chunks are paid for).
    """
    hooks = install("slo_aware", sched_chunk_tokens=8, sched_on_unattainable="defer")
    scheduler = make_scheduler(num_blocks=3)
    late = add(scheduler, 0, list(range(28)), slo_ttft_ms=1000.0)
    out = scheduler.schedule(is_prefill=True)  # its first 8-token chunk
    step_outputs(scheduler, out.running, is_decoding=False)
    assert (late.status, late.num_history_ids, late.num_blocks) == (MessageStatus.WAITING, 8, 2)
    late.request_metadata["arrival_time"] = time.time() - 10.0  # now it cannot meet its TTFT
    fresh = add(scheduler, 1, list(range(100, 128)), slo_ttft_ms=60_000.0)  # its first chunk needs 2 of 3 blocks
    out = scheduler.schedule(is_prefill=True)
    assert out.running == [fresh]
    assert fresh.num_token_ids == 8  # its own first chunk; the late prompt gave up one block (4 tokens)
    assert (late.status, late.num_history_ids, late.num_blocks) == (MessageStatus.WAITING, 4, 1)
    assert hooks.rejected == 0


@pytest.mark.parametrize("device_type, waits", [("cpu", False), ("cuda", True)])
def test_request_intake_waits_for_queued_forwards_only_on_asynchronous_devices(device_type, waits):
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig())
    hooks.attach(RecordingEngine(device_type))

    async def gate_open() -> bool:
        held = asyncio.Event()  # cleared: a forward is queued
        try:
            await asyncio.wait_for(hooks.await_forward_event(hooks.engine, held), timeout=0.2)
            return True
        except asyncio.TimeoutError:
            return False

    assert asyncio.run(gate_open()) is (not waits)


def _turns_given_by(hooks) -> int:
    """How many turns another ready task gets while the model agent is inside ``after_forward``."""
    return _turns_during(lambda: hooks.after_forward(agent=None))


def _turns_during(make_awaitable) -> int:
    """How many turns an always-ready task gets while ``make_awaitable()`` is awaited."""

    async def measure() -> int:
        turns = 0

        async def neighbour():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(neighbour())
        await asyncio.sleep(0)  # the neighbour takes its first turn and is ready again
        before = turns
        await make_awaitable()
        task.cancel()
        return turns - before

    return asyncio.run(measure())


@pytest.mark.parametrize("device_type, turns", [("cpu", SYNCHRONOUS_YIELDS), ("cuda", 1)])
def test_the_model_agent_gives_the_event_loop_more_turns_per_forward_only_on_synchronous_devices(device_type, turns):
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig())
    hooks.attach(RecordingEngine(device_type))
    assert _turns_given_by(hooks) == turns


def test_the_default_after_forward_yields_one_turn_like_stock():
    assert _turns_given_by(SchedulerHooks()) == 1


def _in_flight(is_decoding: bool) -> dict:
    return {"inputs": SimpleNamespace(is_decoding=is_decoding)}


@pytest.mark.parametrize("device_type, in_flight_decodes, engine_choice, expected", [
    ("cpu", False, True, False),  # a prefill in flight: its sequences join the next decode round
    ("cpu", True, True, True),
    ("cpu", True, False, False),
    ("cuda", False, True, True),  # asynchronous devices overlap the early scheduling: stock
    ("cuda", True, True, True),
])
def test_nothing_is_scheduled_during_a_prefill_only_on_synchronous_devices(device_type, in_flight_decodes,
                                                                           engine_choice, expected):
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig())
    hooks.attach(RecordingEngine(device_type))
    assert hooks.prefetch_next(hooks.engine, _in_flight(in_flight_decodes), engine_choice) is expected


@pytest.mark.parametrize("engine_choice", [True, False])
def test_the_default_prefetch_follows_the_engine(engine_choice):
    assert SchedulerHooks().prefetch_next(None, _in_flight(False), engine_choice) is engine_choice


def _decoding_round(scheduler):
    """Two prefilled sequences locked in a decode round, as the engine holds them."""
    seqs = [add(scheduler, i, list(range(10 * i, 10 * i + 8))) for i in range(2)]
    out = scheduler.schedule(is_prefill=True)
    step_outputs(scheduler, out.running, is_decoding=False)
    running = scheduler.schedule(is_prefill=False).running
    scheduler.lock_running(running)
    return seqs, running


def test_a_round_whose_sequences_all_stopped_ends_after_the_forward_already_run(recorded_metrics):
    hooks = install("fifo")
    scheduler = make_scheduler()
    engine = SimpleNamespace(scheduler=scheduler)
    seqs, running = _decoding_round(scheduler)
    # the model agent runs forward k+1 before the engine sees the outputs of loop k
    assert hooks.end_round(None, 0) is False and hooks.end_round(None, 1) is False
    assert hooks.cut_round(engine, running, 0, 16) is False  # both still generating
    for seq in seqs:
        scheduler._set_message_status(seq, MessageStatus.STOPPED)
    assert hooks.end_round(None, 2) is False
    assert hooks.cut_round(engine, running, 1, 16) is False  # decided: forward 2 already ran, its outputs come
    assert hooks.end_round(None, 3) is True  # the agent stops before forward 3
    assert hooks.cut_round(engine, running, 2, 16) is True  # and the engine after the outputs of forward 2
    assert hooks.round_cuts == {RoundCut.ALL_FINISHED: 1, RoundCut.ADMIT_WAITING: 0}
    assert recorded_metrics("sagellm_scheduler_events_total", event="round_cut_all_finished") == 1
    assert hooks.end_round(None, 0) is False and hooks.end_round(None, 1) is False  # the next round starts clean


def test_a_round_ends_for_a_waiting_request_once_until_a_prefill_runs():
    hooks = install("slo_aware")
    scheduler = make_scheduler()
    engine = SimpleNamespace(scheduler=scheduler)
    _, running = _decoding_round(scheduler)
    add(scheduler, 9, list(range(90, 98)))
    assert hooks.end_round(None, 0) is False and hooks.end_round(None, 1) is False
    assert hooks.cut_round(engine, running, 0, 16) is False
    assert hooks.end_round(None, 2) is True
    assert hooks.cut_round(engine, running, 1, 16) is True
    assert hooks.round_cuts[RoundCut.ADMIT_WAITING] == 1
    # the next step decoded again (nothing was admitted): the same waiting request cuts no more rounds
    hooks.end_round(None, 0), hooks.end_round(None, 1)
    assert hooks.cut_round(engine, running, 0, 16) is False
    add(scheduler, 10, list(range(100, 108)))  # a new arrival may
    assert hooks.cut_round(engine, running, 0, 16) is False and hooks.end_round(None, 2) is True
    assert hooks.round_cuts[RoundCut.ADMIT_WAITING] == 2


def test_rounds_of_a_speculating_engine_are_never_cut():
    """LMDeploy gives a speculative round's drafts to its sequences only after the round's last forward."""
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig(scheduler="slo_aware"))
    speculating = RecordingEngine()
    speculating.specdecode_config = SimpleNamespace(num_speculative_tokens=2)
    hooks.attach(speculating)
    set_sched_hooks(hooks)
    scheduler = make_scheduler()
    engine = SimpleNamespace(scheduler=scheduler)
    seqs, running = _decoding_round(scheduler)
    add(scheduler, 9, list(range(90, 98)))  # would cut the round (the test above)
    for seq in seqs:
        scheduler._set_message_status(seq, MessageStatus.STOPPED)  # so would this
    for loop in range(15):
        assert hooks.end_round(None, loop + 1) is False
        assert hooks.cut_round(engine, running, loop, 16) is False
    assert sum(hooks.round_cuts.values()) == 0
    hooks.attach(RecordingEngine())  # the next engine in the process does not speculate
    assert hooks.round_cut is True

def _learn_compute_bound_prefills(hooks):
    """Prefill steps as on a CPU: 5 ms fixed plus 10 ms per token."""
    hooks.cost.observe_prefill(4, 45.0)
    hooks.cost.observe_prefill(8, 85.0)


def _three_waiting(scheduler):
    return [add(scheduler, i, list(range(10 * i, 10 * i + 8))) for i in range(3)]


@pytest.mark.parametrize("scheduler_name", ["fifo", "priority", "slo_aware"])
def test_compute_bound_prefills_take_one_waiting_request_per_step(scheduler_name, recorded_metrics):
    hooks = install(scheduler_name)
    _learn_compute_bound_prefills(hooks)
    scheduler = make_scheduler()
    _three_waiting(scheduler)
    assert sessions(scheduler.schedule(is_prefill=True).running) == [0]  # 1 x 80 ms >= 5 x (1 + 1 behind)
    assert sessions(scheduler.schedule(is_prefill=True).running) == [1]  # 80 >= 5 x (1 + 1 running)
    assert sessions(scheduler.schedule(is_prefill=True).running) == [2]
    assert hooks.prefill_splits == 2
    assert recorded_metrics("sagellm_scheduler_events_total", event="prefill_split") == 2


@pytest.mark.parametrize("make_hooks, learned", [
    (lambda: install("fifo", sched_prefill_split=False), True),
    (lambda: install("fifo"), False),  # no prefill step observed yet
    (lambda: set_sched_hooks(None), False),  # stock
])
def test_one_prefill_step_takes_every_waiting_request_when_split_is_off_unlearned_or_stock(make_hooks, learned):
    hooks = make_hooks()
    if learned:
        _learn_compute_bound_prefills(hooks)
    scheduler = make_scheduler()
    _three_waiting(scheduler)
    assert sessions(scheduler.schedule(is_prefill=True).running) == [0, 1, 2]


@pytest.mark.parametrize("make_hooks", [
    lambda: SchedulerHooks(),  # stock: every round runs to its end
    lambda: SagellmSchedulerHooks(SagellmSchedulerConfig(sched_round_cut=False)),
])
def test_rounds_are_not_cut_by_default_hooks_or_when_turned_off(make_hooks):
    hooks = make_hooks()
    scheduler = make_scheduler()
    seqs, running = _decoding_round(scheduler)
    for seq in seqs:
        scheduler._set_message_status(seq, MessageStatus.STOPPED)
    engine = SimpleNamespace(scheduler=scheduler)
    for loop in range(15):
        assert hooks.end_round(None, loop + 1) is False
        assert hooks.cut_round(engine, running, loop, 16) is False


def test_no_cut_without_a_model_agent_reporting_its_loops():
    """A multi-process executor runs the agent elsewhere: the engine never cuts alone."""
    hooks = install("fifo")
    scheduler = make_scheduler()
    seqs, running = _decoding_round(scheduler)
    for seq in seqs:
        scheduler._set_message_status(seq, MessageStatus.STOPPED)
    assert hooks.cut_round(SimpleNamespace(scheduler=scheduler), running, 3, 16) is False


class _FakeHoldingStrategy(FifoStrategy):
    """Test double: engine order everywhere, holds the sequences in ``hold`` out of decode rounds."""

    name = "fake_holding"
    stock = False
    hold: frozenset = frozenset()

    def hold_from_round(self, snapshot):
        return frozenset(s.seq_id for s in snapshot.running if s.seq_id in self.hold)


def _install_holding(sched_decode_pacing=True, **options):
    hooks = install("fifo", sched_decode_pacing=sched_decode_pacing, **options)
    hooks.strategy = hooks.executor.strategy = _FakeHoldingStrategy()
    return hooks


def _three_prefilled(scheduler):
    seqs = [add(scheduler, i, list(range(10 * i, 10 * i + 8))) for i in range(3)]
    out = scheduler.schedule(is_prefill=True)
    step_outputs(scheduler, out.running, is_decoding=False)
    return seqs


def test_a_held_sequence_sits_out_the_round_keeps_its_blocks_and_rejoins_the_whole_batch(recorded_metrics):
    hooks = _install_holding()
    scheduler = make_scheduler()
    seqs = _three_prefilled(scheduler)
    # queue lengths as the prefill's outputs arrived (its three sequences locked in it)
    assert recorded_metrics("sagellm_scheduler_queue_length", queue="running") == 3
    assert recorded_metrics("sagellm_scheduler_queue_length", queue="waiting") == 0
    blocks = seqs[2].num_blocks
    hooks.strategy.hold = frozenset({seqs[2].seq_id})
    running = scheduler.schedule(is_prefill=False).running
    assert sessions(running) == [0, 1]
    assert seqs[2].status == MessageStatus.RUNNING and seqs[2].num_blocks >= blocks  # blocks kept
    assert hooks.held_from_rounds == 1
    assert recorded_metrics("sagellm_scheduler_events_total", event="held_from_round") == 1
    # scheduled ahead while the round runs: the held sequence gets no round of its own
    scheduler.lock_running(running)
    hooks.strategy.hold = frozenset()
    assert scheduler.schedule(is_prefill=False).running == []
    step_outputs(scheduler, running, is_decoding=True)
    # the round ended: everyone decodes together again
    assert sorted(sessions(scheduler.schedule(is_prefill=False).running)) == [0, 1, 2]


@pytest.mark.parametrize("make_hooks", [
    lambda: SchedulerHooks(),  # stock
    lambda: _install_holding(sched_decode_pacing=False),
])
def test_every_running_sequence_decodes_with_default_hooks_or_pacing_off(make_hooks):
    hooks = make_hooks()
    set_sched_hooks(hooks)
    if isinstance(hooks, SagellmSchedulerHooks):
        hooks.strategy.hold = frozenset({1})
    scheduler = make_scheduler()
    _three_prefilled(scheduler)
    assert sorted(sessions(scheduler.schedule(is_prefill=False).running)) == [0, 1, 2]


def _turns_before_forward(hooks, is_decoding: bool, hops: int = 20) -> int:
    """How many hops of a ready task chain (a token on its way out) run while the agent is in ``before_forward``."""

    async def measure() -> int:
        done = 0

        async def chain():
            nonlocal done
            for _ in range(hops):
                done += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(chain())
        await hooks.before_forward(agent=None, inputs=SimpleNamespace(is_decoding=is_decoding))
        ran = done
        task.cancel()
        return ran

    return asyncio.run(measure())


@pytest.mark.parametrize("device_type, is_decoding, hops", [
    ("cpu", False, 20),  # before a prefill every ready task runs to its end first
    ("cpu", True, 0),  # a decode step is short: nothing extra
    ("cuda", False, 0),  # asynchronous devices: stock
])
def test_before_a_prefill_on_a_synchronous_device_the_loop_runs_until_idle(device_type, is_decoding, hops):
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig())
    hooks.attach(RecordingEngine(device_type))
    assert _turns_before_forward(hooks, is_decoding) == hops


def test_the_first_decode_forward_after_a_prefill_drains_too():
    hooks = SagellmSchedulerHooks(SagellmSchedulerConfig())
    hooks.attach(RecordingEngine("cpu"))
    ran = [_turns_before_forward(hooks, is_decoding) for is_decoding in (True, False, True, True, False, True)]
    assert ran == [0, 20, 20, 0, 20, 20]  # the prefill's first tokens leave before the next forward


def test_the_default_before_forward_does_not_yield():
    assert _turns_before_forward(SchedulerHooks(), is_decoding=False) == 0


def test_yield_until_idle_is_bounded():
    assert _turns_during(lambda: yield_until_idle(5)) == 5
