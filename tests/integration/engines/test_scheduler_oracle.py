"""Greedy output through the patched engine equals transformers, token for token, under every strategy.

The engine runs with a small prefill budget, few batch slots and (one variant) a KV cache too
small for the batch, so the strategies really reorder admission, split long prompts across steps
and preempt. Every request carries metadata (priority, tenant, generous SLOs) on
``GenerationConfig.request_metadata``, the field the server fills from the HTTP request.
"""

from __future__ import annotations

import threading
import time

import pytest
from lmdeploy.pytorch.plugins import load_plugins
from lmdeploy.pytorch.sched_hooks import SchedulerHooks, get_sched_hooks, set_sched_hooks

from sagellm.core.request import RequestMetadata
from sagellm.engines.lmdeploy.scheduling import SagellmSchedulerHooks
from sagellm.scheduler_ir import RoundCut, SchedulerConfig, read_records
from sagellm.scheduler_ir.strategies.fifo import FifoStrategy
from tests.integration.engines.oracle import transformers_greedy
from tests.integration.engines.test_cpu_oracle import build_pipeline, make_prompts

pytestmark = pytest.mark.slow

MAX_NEW = 12
PREEMPT_MAX_NEW = 40  # long enough for the running sequences to outgrow a small KV cache
PROMPTS = make_prompts(16, 3, 150, seed=21)
STRATEGIES = {
    "stock (no sagellm hooks)": None,
    "fifo": dict(scheduler="fifo"),
    "priority": dict(scheduler="priority", sched_aging_s=0.5),
    "slo_aware": dict(scheduler="slo_aware", sched_chunk_tokens=32),
    "fair": dict(scheduler="fair", sched_tenant_weights={"gold": 3.0}),
    "adaptive": dict(scheduler="adaptive", sched_chunk_tokens=48),
}


def metadata(index: int) -> dict:
    return RequestMetadata(
        request_id=f"oracle-{index}",
        priority=(index * 7) % 5 - 2,
        tenant=("gold", "free", None)[index % 3],
        slo_ttft_ms=120_000.0,  # generous, but a stuck engine ends in rejections instead of a hang
        slo_tpot_ms=60_000.0,
        arrival_time=time.time(),
    ).to_dict()


@pytest.fixture(scope="module")
def model_and_reference(tiny_model_dir):
    from lmdeploy import Tokenizer

    model_dir = tiny_model_dir("llama")
    tokenizer = Tokenizer(str(model_dir))
    prompt_ids = [tokenizer.encode(prompt, add_bos=True) for prompt in PROMPTS]
    assert max(len(ids) for ids in prompt_ids) > 3 * 32, "some prompts must be split into several chunks"
    return model_dir, prompt_ids, transformers_greedy(model_dir, prompt_ids, MAX_NEW)


@pytest.fixture(scope="module")
def long_reference(model_and_reference):
    model_dir, prompt_ids, _ = model_and_reference
    return transformers_greedy(model_dir, prompt_ids, PREEMPT_MAX_NEW)


@pytest.fixture
def hooks_slot():
    load_plugins()  # first, or the plugin's own install would replace the hooks a test sets
    previous = get_sched_hooks()
    yield
    set_sched_hooks(previous)


def run_engine(model_dir, max_new: int | list[int] = MAX_NEW, **engine_overrides) -> list[list[int]]:
    from lmdeploy import GenerationConfig

    pipe = build_pipeline(model_dir, max_prefill_token_num=128, max_batch_size=6, **engine_overrides)
    limits = max_new if isinstance(max_new, list) else [max_new] * len(PROMPTS)
    try:
        configs = [
            GenerationConfig(max_new_tokens=limits[i], do_sample=False, top_k=1, ignore_eos=True,
                             request_metadata=metadata(i))
            for i in range(len(PROMPTS))
        ]
        responses = pipe.batch_infer(PROMPTS, gen_config=configs, do_preprocess=False)
        assert [r.finish_reason for r in responses] == ["length"] * len(PROMPTS)
        return [list(r.token_ids) for r in responses]
    finally:
        pipe.close()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_is_token_identical(name, model_and_reference, hooks_slot, tmp_path):
    model_dir, _, reference = model_and_reference
    options = STRATEGIES[name]
    trace = tmp_path / "plans.jsonl"
    if options is None:
        set_sched_hooks(SchedulerHooks())
    else:
        set_sched_hooks(SagellmSchedulerHooks(SchedulerConfig(**options, sched_trace=str(trace))))
    assert run_engine(model_dir) == reference
    if options is None:
        return
    records = read_records(trace)
    prefill = [r for r in records if r["kind"] == "prefill"]
    assert prefill and all(r["strategy"].startswith(options["scheduler"]) for r in records)
    seen = {req["request_id"] for r in prefill for req in r["requests"].values()}
    assert seen == {f"oracle-{i}" for i in range(len(PROMPTS))}
    if options["scheduler"] == "slo_aware":
        assert any(r["chunk_ends"] for r in prefill), "long prompts must have been split"
        assert all(not r["rejected"] for r in prefill)


@pytest.mark.parametrize("name", ["fifo", "priority", "slo_aware"])
def test_preemption_under_a_small_kv_cache_is_token_identical(name, model_and_reference, long_reference, hooks_slot,
                                                               tmp_path):
    model_dir, reference = model_and_reference[0], long_reference
    trace = tmp_path / "plans.jsonl"
    options = dict(STRATEGIES[name], sched_trace=str(trace))
    hooks = SagellmSchedulerHooks(SchedulerConfig(**options))
    set_sched_hooks(hooks)
    preempted = []
    original = hooks.preempt

    def spy(scheduler, running):
        victim = original(scheduler, running)
        preempted.append(victim.seq_id)
        return victim

    hooks.preempt = spy
    assert run_engine(model_dir, PREEMPT_MAX_NEW, num_gpu_blocks=20) == reference
    assert preempted, "the KV cache must be small enough to force preemption"


@pytest.mark.parametrize("name", ["fifo", "slo_aware"])
def test_decode_rounds_ended_early_are_token_identical(name, model_and_reference, long_reference, hooks_slot):
    """Requests stop at different loops of their rounds and more wait than the batch holds, so rounds
    end early both to let waiting requests in and once all their sequences stopped."""
    model_dir, reference = model_and_reference[0], long_reference
    limits = [PREEMPT_MAX_NEW - 5 * (i % 7) for i in range(len(PROMPTS))]
    hooks = SagellmSchedulerHooks(SchedulerConfig(**STRATEGIES[name]))
    set_sched_hooks(hooks)
    assert run_engine(model_dir, limits) == [ref[:n] for ref, n in zip(reference, limits)]
    assert hooks.round_cuts[RoundCut.ADMIT_WAITING] > 0 and hooks.round_cuts[RoundCut.ALL_FINISHED] > 0


def test_without_round_cuts_every_round_runs_to_its_end(model_and_reference, long_reference, hooks_slot):
    model_dir, reference = model_and_reference[0], long_reference
    limits = [PREEMPT_MAX_NEW - 5 * (i % 7) for i in range(len(PROMPTS))]
    hooks = SagellmSchedulerHooks(SchedulerConfig(scheduler="fifo", sched_round_cut=False))
    set_sched_hooks(hooks)
    assert run_engine(model_dir, limits) == [ref[:n] for ref, n in zip(reference, limits)]
    assert sum(hooks.round_cuts.values()) == 0


@pytest.mark.parametrize("name", ["fifo", "slo_aware"])
def test_prefill_steps_of_one_request_each_are_token_identical(name, model_and_reference, hooks_slot):
    """The cost model starts out compute-bound (as learned on a CPU), so the 16 prompts submitted at
    once are prefilled over many steps instead of a few full ones."""
    model_dir, _, reference = model_and_reference
    hooks = SagellmSchedulerHooks(SchedulerConfig(**STRATEGIES[name]))
    hooks.cost.observe_prefill(4, 45.0)
    hooks.cost.observe_prefill(8, 85.0)
    set_sched_hooks(hooks)
    assert run_engine(model_dir) == reference
    assert hooks.prefill_splits > 0


class _FakeFaultAfterThreeRounds(SagellmSchedulerHooks):
    """Test double: scheduling the fourth decode round raises, which stops LMDeploy's engine loop."""

    def __init__(self):
        super().__init__(SchedulerConfig(scheduler="fifo"))
        self.rounds = 0

    def order_running(self, scheduler, running):
        self.rounds += 1
        if self.rounds > 3:
            raise RuntimeError("injected scheduler fault")
        return super().order_running(scheduler, running)


def test_requests_in_flight_get_an_error_when_the_engine_loop_stops(model_and_reference, hooks_slot):
    """Without the loop guard the requests would wait forever; here each ends with an error."""
    from lmdeploy import GenerationConfig

    set_sched_hooks(_FakeFaultAfterThreeRounds())
    pipe = build_pipeline(model_and_reference[0], max_batch_size=6)
    finished = []
    try:
        gen = GenerationConfig(max_new_tokens=200, do_sample=False, top_k=1, ignore_eos=True)
        worker = threading.Thread(target=lambda: finished.extend(pipe.batch_infer(PROMPTS[:4], gen_config=gen,
                                                                                  do_preprocess=False)), daemon=True)
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive(), "requests in flight were never answered"
    finally:
        pipe.close()
    assert [r.finish_reason for r in finished] == ["error"] * 4


class _FakeAlternateHolding(FifoStrategy):
    """Test double: engine order everywhere; every other decode round, the running sequence with the
    longest history sits it out (what ``slo_aware``'s pacing does to a document beside chats)."""

    name = "fake_alternate_holding"
    stock = False
    rounds = 0

    def hold_from_round(self, snapshot):
        self.rounds += 1
        if len(snapshot.running) < 2 or self.rounds % 2:
            return frozenset()
        return frozenset({max(snapshot.running, key=lambda s: (s.total_tokens, s.seq_id)).seq_id})


def test_sequences_sitting_out_decode_rounds_are_token_identical(model_and_reference, long_reference, hooks_slot):
    model_dir, reference = model_and_reference[0], long_reference
    limits = [PREEMPT_MAX_NEW - 5 * (i % 7) for i in range(len(PROMPTS))]
    hooks = SagellmSchedulerHooks(SchedulerConfig(scheduler="fifo", sched_decode_pacing=True))
    hooks.strategy = hooks.executor.strategy = _FakeAlternateHolding()
    set_sched_hooks(hooks)
    assert run_engine(model_dir, limits) == [ref[:n] for ref, n in zip(reference, limits)]
    assert hooks.held_from_rounds > 5
