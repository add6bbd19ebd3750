"""Scheduling strategies for LMDeploy: the adapter from patch 0004's seam to ``sagellm.scheduler_ir``.

``SagellmSchedulerHooks`` (installed by the ``scheduler`` plugin) turns LMDeploy's ``Scheduler``
into an ``EngineSnapshot`` at each hook call, asks the ``StepExecutor`` and carries out the
answer on LMDeploy's objects:

==========================  ==================================================================
hook (patch 0004)           what happens here
==========================  ==================================================================
``request_metadata``        server process: the metadata ``SchedulingMiddleware`` parsed
``order_waiting``           prefill order: this step's candidates, then the other waiting
                            sequences (their blocks are the first evicted for the candidates);
                            refused requests end now with an error (reason in the text; the
                            server turns it into HTTP 503)
``stop_admission``          admission stops at the first non-candidate; a long prompt chosen
                            for chunking is cut to this step's chunk
``order_running``           who gets decode blocks first
``preempt``                 who gives up its blocks
``choose_prefill``          prefill or decode next
``before_step_outputs``     queue lengths go to /metrics; step times feed the cost model; a
                            chunk that ran becomes computed KV (published to the prefix trie)
                            and its sequence waits for the next chunk, without emitting the
                            token sampled after it
``await_forward_event``     on synchronous devices (cpu), request intake and response sending
                            do not wait for queued forwards (see below)
``after_forward``           on synchronous devices, the model agent yields ``SYNCHRONOUS_YIELDS``
                            event-loop turns per forward instead of one (see below)
``before_forward``          on synchronous devices, the model agent lets every ready task run
                            before a prefill forward (see below)
``prefetch_next``           on synchronous devices, nothing is scheduled while a prefill runs
                            (see below)
``cut_round``/``end_round`` a decode round ends early when the strategy says so
                            (``rounds.round_cut``; see below)
``decode_batch``            running requests the strategy holds back sit out the round
                            being scheduled (keeping their blocks); while a round is in
                            flight they are not scheduled as a round of their own, so they
                            rejoin the whole batch when it ends
==========================  ==================================================================

With ``fifo`` and no trace every hook returns LMDeploy's own answer without building a
snapshot (``StepExecutor.passthrough``).

Request intake and streaming on synchronous devices: LMDeploy's engine loop lets new requests in
(``ADD_MESSAGE``) and sends responses only while a counter event says no forward is queued. On a GPU
forwards are asynchronous and the event opens every step; on the cpu device the forward runs inside
the engine's event loop and, with the next step always prefetched, the event never opens while
requests are running: new requests wait until the engine falls idle and every token of a request
reaches the client at once (measured: 200 tokens streamed as one chunk after 1.1 s). For devices in
``SYNCHRONOUS_DEVICES`` the wait is a plain yield instead, whatever the strategy (``fifo`` included):
requests join the next step and tokens stream as they are produced.

That alone is not enough: the forward is the only thing that runs between two turns of the loop,
and LMDeploy's model agent gives up one turn per forward. A token on its way out moves through
several tasks (engine outputs -> response loop -> the request's stream -> the RPC server's socket)
and a new request through as many on its way in, one hop per turn, so each crossing took several
forward steps, and a request that finished mid-round was replaced only one or two decode rounds
later. ``after_forward`` gives the loop ``SYNCHRONOUS_YIELDS`` turns per forward on those devices
(about 10 us each when nothing is ready). Measured on chat at concurrency 32 (tiny model, 2 cores):
TTFT p50 1.6 s -> 0.6 s, output throughput 615 -> 700 tok/s.

Those turns are enough for a decode step, which is short: tokens still on their way out go with
the next step's. Before a prefill, which takes as long as its prompt (a 1,500-token document: 150-230
ms on the 2-core CPU), ``before_forward`` gives the loop turns until no other task is ready (at most
``PREFILL_DRAIN_TURNS``), so the tokens of the steps before it reach the client first. Measured in
goodput runs before this: the last token of two interactive requests came 178-226 ms after the one
before it, behind a document's prefill, and each missed its TPOT target by that alone. On HTTP
(tiny model, main-group server, runs alternating with and without): chat at concurrency 32 TTFT
p50 254/227 vs 445/376 ms at 988/1187 vs 879/1186 output tok/s; multi-turn TTFT p50 81/78 vs
95/92 ms at 343/331 vs 341/326 tok/s. The first forward after a prefill drains the same way: the
prefill's first tokens are then on their way before the decode forward starts. Without it, a
3-token prompt on an idle server reached the engine 4 ms after it was sent, was prefilled 7 ms
later, and its first token arrived 7 ms after that, one decode forward later.

Stock LMDeploy schedules the next step while the current one runs, with the current step's
sequences locked. During a prefill that next step is a decode round of the others, so the
sequences just prefilled sit out one whole round (16 steps) before their second token: at
concurrency 8 half the decode batch was often idle. On a synchronous device the early scheduling
overlaps nothing, so ``prefetch_next`` declines it while a prefill is in flight, and the next
step is chosen once the prefill's outputs are in, with its sequences unlocked (measured on chat at
concurrency 8, runs alternating: 485 / 555 vs 451 / 461 output tok/s, E2E p50 983 / 869 vs
1032 / 1046 ms, TTFT p50 unchanged).

Ending decode rounds early: LMDeploy decodes in rounds of ``prefill_interval`` forwards and admits
requests only between them, computing sequences that stopped mid-round to the round's end. After
each loop's outputs the engine asks ``cut_round``; the model agent, which runs one forward ahead of
the outputs the engine has seen (it yields only after a forward), asks ``end_round`` before each
forward. The first ``cut_round`` that decides to end the round fixes the end after the forward the
agent already ran, and both sides stop there. The agent's position is known only when it runs in
the engine's process (the uni executor); elsewhere no round is cut. A cut made for waiting requests
is not repeated for the same queue until a prefill has run, so a queue the next step cannot admit
(no free blocks, or the strategy holds it back) does not end every round. Measured on the 2-core
CPU (tiny model, cut off/on, alternating runs): TTFT p50 at concurrency 1 63/61 -> 34/37 ms,
at concurrency 8 157/156 -> 83/83 ms, output throughput within the runs' noise.

Rounds of an engine that speculates are never cut: LMDeploy hands a round's draft tokens to its
sequences only with the outputs of the round's last forward, so after a cut each sequence held no
drafts and the tokens it had just accepted (one or more); the next decode batch then mixed query
lengths, LMDeploy took them all from the first sequence, and the forward failed on a shape
mismatch (6 tokens vs 5 positions), ending every request in flight (requests arriving while a
speculative round ran, 2-core CPU).

Prefill steps of one request each: LMDeploy takes every waiting request that fits into one prefill
step. When a request's prefill compute outweighs the step's fixed cost for those it would delay
(``sagellm.scheduler_ir.prefill_steps``, from the learned step costs), ``stop_admission`` ends the
step's admission before it, and the request gets the next prefill step.

How a prompt is split across steps (LMDeploy 0.11 has no chunked prefill): the sequence's token
buffer is cut at the chunk end (a KV-block boundary) and the rest kept aside, so the engine
prefills only the chunk. When that step's outputs arrive -- before LMDeploy appends the token it
sampled -- the sequence's computed boundary moves to the chunk end (``set_step``), its now full
blocks go into the prefix trie (as decoding would do), the rest of the prompt is put back and the
sequence returns to WAITING. It is then never LOCKED when the outputs are applied, so LMDeploy
skips it: no token, no response. This touches ``SchedulerSequence`` internals
(``history_cache``, ``_num_token_ids``); only plain text sequences of the default AR strategy are
split (no multimodal input, logits output, guided decoding, logits processors or migration).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np
from lmdeploy.messages import ResponseType
from lmdeploy.pytorch.messages import MessageStatus
from lmdeploy.pytorch.plugins import register_app_hook
from lmdeploy.pytorch.sched_hooks import SchedulerHooks, set_sched_hooks

from sagellm.core.config import load_config
from sagellm.core.request import RequestMetadata
from sagellm.engines.lmdeploy.loop_guard import guard_engine_loop
from sagellm.engines.lmdeploy.scheduling_api import SCOPE_KEY, SchedulingMiddleware, rejection_text
from sagellm.scheduler_ir import (
    EngineSnapshot,
    PlanTracer,
    RoundCut,
    RoundProgress,
    SchedulerConfig,
    SeqState,
    SeqView,
    StepCostModel,
    StepExecutor,
    build_strategy,
    prefill_batch_size,
)
from sagellm.telemetry import metrics

logger = logging.getLogger("sagellm.scheduling")

_PLAIN_SEQUENCE = "SchedulerSequenceDefault"
#: devices whose forward runs synchronously in the engine's event loop (see the module docstring)
SYNCHRONOUS_DEVICES = frozenset({"cpu"})
#: event-loop turns the model agent gives up after each forward on those devices: enough for a
#: token or a new request to cross the engine process's task chain within one step
SYNCHRONOUS_YIELDS = 8
#: most event-loop turns the model agent gives up before a prefill forward on those devices
PREFILL_DRAIN_TURNS = 64


@dataclass
class _Chunk:
    """A sequence cut at ``end`` for this step; ``tail`` holds the token ids after it."""

    seq: object
    end: int
    tail: np.ndarray


class SagellmSchedulerHooks(SchedulerHooks):
    """Patch 0004's hooks backed by a ``scheduler_ir`` strategy (see the module docstring)."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.strategy = build_strategy(config.scheduler, config.options())
        self.executor = StepExecutor(self.strategy)
        self.cost = StepCostModel()
        self.engine = None
        self.synchronous_device = False
        self.round_cut = config.sched_round_cut
        self.step = 0
        self._chunks: dict[int, _Chunk] = {}
        self._chunk_ends: dict[int, int] = {}
        self._candidates: set[int] | None = None  # None: no veto (passthrough)
        self._admit_limit: int | None = None  # most requests the prefill step being scheduled takes
        self._admitted = 0
        self._first_token_s: dict[int, float] = {}
        self._last_output_s = 0.0
        self._scheduled_s = {True: 0.0, False: 0.0}  # is_prefill -> time the last such step was scheduled
        self._outputs_of: int | None = None  # id() of the running list whose loops are being reported
        self._loops_seen = 0
        self._agent_loop: int | None = None  # the forward the model agent started last in this round
        self._cut_before: int | None = None  # the loop the round ends before, once decided
        self._futile_waiting: int | None = None  # waiting count a round was cut for, until a prefill runs
        self._held: frozenset[int] = frozenset()  # sequences held out of the last decode round scheduled
        self._last_forward_prefilled = False  # the model agent's previous forward was a prefill
        self.rejected = 0
        self.prefill_splits = 0
        self.round_cuts = {reason: 0 for reason in RoundCut}
        self.held_from_rounds = 0

    # ------------------------------------------------------------------ server process

    def request_metadata(self, raw_request):
        if raw_request is None:
            return None
        return raw_request.scope.get(SCOPE_KEY)

    # ------------------------------------------------------------------ engine process

    def attach(self, engine) -> None:
        self.engine = engine
        guard_engine_loop(engine)
        self.synchronous_device = getattr(engine.engine_config, "device_type", None) in SYNCHRONOUS_DEVICES
        # a speculative round hands out its draft tokens only after its last forward (module docstring)
        self.round_cut = self.config.sched_round_cut and getattr(engine, "specdecode_config", None) is None
        if self.config.sched_trace:
            self.executor.tracer = PlanTracer(self.config.sched_trace)
        logger.info("sagellm scheduler: %s%s", self.strategy.describe(),
                    f" (trace {self.config.sched_trace})" if self.config.sched_trace else "")

    @property
    def passthrough(self) -> bool:
        return self.executor.passthrough

    def order_waiting(self, scheduler, waiting):
        self._restore_unadmitted(scheduler)
        self._chunk_ends = {}
        self._candidates = None
        self._admitted = 0
        self._scheduled_s[True] = time.time()
        if self.passthrough:
            self._admit_limit = self._prefill_batch_limit(scheduler, waiting)
            return waiting
        self.step += 1
        snapshot = self.snapshot(scheduler, waiting=waiting)
        step = self.executor.prefill_step(snapshot)
        by_id = {seq.seq_id: seq for seq in waiting}
        for seq_id, reason in step.rejected.items():
            self._reject(scheduler, by_id[seq_id], reason)
        self._chunk_ends = dict(step.chunk_ends)
        self._candidates = set(step.order)
        others = [seq for seq in waiting if seq.seq_id not in self._candidates and seq.seq_id not in step.rejected]
        candidates = [by_id[seq_id] for seq_id in step.order]
        self._admit_limit = self._prefill_batch_limit(scheduler, candidates)
        return candidates + others

    def stop_admission(self, scheduler, seq) -> bool:
        if self._admit_limit is not None and self._admitted >= self._admit_limit:
            self.prefill_splits += 1
            metrics.scheduler_event("prefill_split")
            return True
        if self._candidates is not None and seq.seq_id not in self._candidates:
            return True
        end = self._chunk_ends.get(seq.seq_id)
        if end is not None and seq.num_history_ids < end < seq.num_all_ids:
            tail = np.array(seq.history_cache[end:seq.num_all_ids], copy=True)
            seq.history_cache.resize(end)
            seq._num_token_ids = end - seq.num_history_ids
            self._chunks[seq.seq_id] = _Chunk(seq, end, tail)
        self._admitted += 1
        return False

    def _prefill_batch_limit(self, scheduler, candidates) -> int | None:
        """How many of ``candidates`` (in admission order) the prefill step takes; None: no limit."""
        if not self.config.sched_prefill_split or len(candidates) < 2:
            return None
        pending = []
        for seq in candidates:
            end = self._chunk_ends.get(seq.seq_id, seq.num_all_ids)
            pending.append(max(1, min(end, seq.num_all_ids) - int(seq.num_history_ids)))
        running = scheduler.num_running() + scheduler.seq_manager.num_sequences(MessageStatus.LOCKED)
        return prefill_batch_size(pending, running, self.cost.estimate())

    def order_running(self, scheduler, running):
        self._scheduled_s[False] = time.time()
        if self.passthrough:
            return running
        self.step += 1
        snapshot = self.snapshot(scheduler, running=running)
        by_id = {seq.seq_id: seq for seq in running}
        return [by_id[seq_id] for seq_id in self.executor.decode_order(snapshot)]

    def decode_batch(self, scheduler, running):
        if self.passthrough or not self.config.sched_decode_pacing or not running:
            return running
        ids = {seq.seq_id for seq in running}
        if scheduler.locked:  # scheduled ahead while a round runs: only sequences left out of it are here
            return [] if self._held & ids else running
        self._held = self.executor.held_from_round(self.snapshot(scheduler))
        kept = [seq for seq in running if seq.seq_id not in self._held]
        if not kept:
            return running
        self.held_from_rounds += len(running) - len(kept)
        metrics.scheduler_event("held_from_round", len(running) - len(kept))
        return kept

    def preempt(self, scheduler, running):
        if self.passthrough:
            return running.pop(-1)
        snapshot = self.snapshot(scheduler, running=running)
        victim = self.executor.preempt(snapshot, tuple(seq.seq_id for seq in running))
        index = next(i for i, seq in enumerate(running) if seq.seq_id == victim)
        return running.pop(index)

    def choose_prefill(self, scheduler, prefill):
        if self.passthrough:
            return prefill
        return self.executor.choose_prefill(self.snapshot(scheduler), prefill)

    def prefetch_next(self, engine, forward_inputs, prefetch):
        if self.synchronous_device and not forward_inputs["inputs"].is_decoding:
            return False  # a decode round scheduled during a prefill would leave its sequences out
        return prefetch

    def before_step_outputs(self, scheduler, running, is_decoding) -> None:
        now = time.time()
        metrics.scheduler_queue_length("waiting", scheduler.num_waiting())
        metrics.scheduler_queue_length(
            "running", scheduler.num_running() + scheduler.seq_manager.num_sequences(MessageStatus.LOCKED))
        self._observe(running, is_decoding, now)
        if not is_decoding:
            self._futile_waiting = None
            for seq in running:
                chunk = self._chunks.pop(seq.seq_id, None)
                if chunk is not None and chunk.seq is seq:
                    self._finish_chunk(scheduler, seq, chunk)
                elif seq.num_new_tokens == 0 and seq.seq_id not in self._first_token_s:
                    self._first_token_s[seq.seq_id] = now
        self._last_output_s = now

    def cut_round(self, engine, running, loop, num_loops) -> bool:
        if self._cut_before is not None:
            return loop + 1 >= self._cut_before
        if not self.round_cut or self._agent_loop is None or loop + 1 >= num_loops:
            return False  # no agent in this process reports its loops (e.g. a multi-process executor)
        scheduler = engine.scheduler
        waiting = scheduler.num_waiting()
        if self._futile_waiting is not None and waiting <= self._futile_waiting:
            waiting = 0  # the last cut for them was followed by no prefill: wait for a change
        progress = RoundProgress(
            loops_done=loop + 1,
            loops=num_loops,
            batch=len(running),
            finished=sum(seq.status != MessageStatus.LOCKED for seq in running),
            waiting=waiting,
            max_batch=scheduler.scheduler_config.max_batches,
        )
        reason = self.strategy.cut_round(progress)
        if reason is None:
            return False
        # the agent has already run forward ``_agent_loop`` (it yields only after a forward): its
        # outputs come next, and the round ends after them
        self._cut_before = self._agent_loop + 1
        if reason is RoundCut.ADMIT_WAITING:
            self._futile_waiting = waiting
        self.round_cuts[reason] += 1
        metrics.scheduler_event(f"round_cut_{reason.value}")
        return loop + 1 >= self._cut_before

    def end_round(self, agent, loop) -> bool:
        if loop == 0:
            self._cut_before = None
        elif self._cut_before is not None and loop >= self._cut_before:
            self._agent_loop = None
            return True
        self._agent_loop = loop
        return False

    async def await_forward_event(self, engine, forward_event) -> None:
        if self.synchronous_device and not forward_event.is_set():
            await asyncio.sleep(0)  # let the forward task run first, then go on
            return
        await forward_event.wait()

    async def before_forward(self, agent, inputs) -> None:
        if not self.synchronous_device:
            return
        follows_prefill = self._last_forward_prefilled
        self._last_forward_prefilled = not inputs.is_decoding
        if not inputs.is_decoding or follows_prefill:
            await yield_until_idle(PREFILL_DRAIN_TURNS)

    async def after_forward(self, agent) -> None:
        for _ in range(SYNCHRONOUS_YIELDS if self.synchronous_device else 1):
            await asyncio.sleep(0)

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, scheduler, waiting=None, running=None) -> EngineSnapshot:
        """LMDeploy's scheduler as an ``EngineSnapshot``.

        ``waiting``/``running``: the sequences a hook was given, in its order (``running`` then lists
        exactly the candidates); default: every waiting sequence and the whole batch (in flight or
        not) in arrival order.
        """
        now = time.time()
        clock_offset = now - time.perf_counter()
        if waiting is None:
            waiting = sorted(scheduler.waiting, key=lambda seq: seq.arrive_time)
        if running is None:  # the whole batch, in flight or not
            running = sorted(scheduler.running + scheduler.locked, key=lambda seq: seq.arrive_time)
        self._prune_first_tokens(waiting, running)
        cache_config = scheduler.cache_config
        block_manager = scheduler.block_manager
        cost = self.cost.estimate()
        return EngineSnapshot(
            now_s=now,
            step_id=self.step,
            waiting=tuple(self._view(seq, SeqState.WAITING, clock_offset) for seq in waiting),
            running=tuple(self._view(seq, SeqState.RUNNING, clock_offset) for seq in running),
            free_blocks=int(block_manager.get_num_free_gpu_blocks()),
            total_blocks=int(block_manager.num_gpu_blocks),
            block_size=int(cache_config.block_size),
            max_batches=int(scheduler.scheduler_config.max_batches),
            prefill_token_budget=int(cache_config.max_prefill_token_num),
            decode_loops=self._decode_loops(scheduler),
            cost=cost,
            inflight_ms=self._inflight_ms(scheduler, cost, now),
        )

    def _view(self, seq, state: SeqState, clock_offset: float) -> SeqView:
        meta = _metadata(seq)
        arrival = meta.arrival_time if meta is not None else seq.arrive_time + clock_offset
        return SeqView(
            seq_id=int(seq.seq_id),
            request_id=meta.request_id if meta is not None else f"session-{seq.session_id}",
            state=state,
            arrival_s=max(0.0, float(arrival)),
            computed_tokens=int(seq.num_history_ids),
            pending_tokens=max(1 if state is SeqState.WAITING else 0, int(seq.num_token_ids)),
            generated_tokens=int(seq.num_new_tokens),
            max_new_tokens=max(0, int(seq.sampling_param.max_new_tokens)),
            first_token_s=self._first_token_s.get(seq.seq_id),
            num_blocks=int(seq.num_blocks),
            priority=meta.priority if meta is not None else 0,
            tenant=meta.tenant if meta is not None else None,
            slo_ttft_ms=meta.slo_ttft_ms if meta is not None else None,
            slo_tpot_ms=meta.slo_tpot_ms if meta is not None else None,
            chunkable=_chunkable(seq),
            in_flight=state is SeqState.RUNNING and seq.status == MessageStatus.LOCKED,
        )

    @staticmethod
    def _decode_loops(scheduler) -> int:
        return max(1, int(getattr(scheduler.scheduler_config, "prefill_interval", 16)))

    def _inflight_ms(self, scheduler, cost, now: float) -> float:
        locked = scheduler.locked
        if not locked:
            return 0.0
        if any(seq.num_new_tokens == 0 for seq in locked):
            tokens = sum(int(seq.num_token_ids) for seq in locked)
            started = max(self._last_output_s, self._scheduled_s[True])
            return max(0.0, cost.prefill_ms(tokens) - (now - started) * 1000.0)
        loops_left = max(1, self._decode_loops(scheduler) - self._loops_seen)
        return loops_left * cost.decode_loop_ms(len(locked))

    def _prune_first_tokens(self, waiting, running) -> None:
        if len(self._first_token_s) > 4 * (len(waiting) + len(running)) + 64:
            alive = {seq.seq_id for seq in list(waiting) + list(running)}
            self._first_token_s = {k: v for k, v in self._first_token_s.items() if k in alive}

    # ------------------------------------------------------------------ actions

    def _reject(self, scheduler, seq, reason: str) -> None:
        text = rejection_text(self.strategy.describe(), reason)
        logger.warning("session %s: %s", seq.session_id, text)
        self.chunk_restore(seq)
        scheduler._set_message_status(seq, MessageStatus.STOPPED)
        self.engine._response(seq.resp, ResponseType.INTERNAL_ENGINE_ERROR, err_msg=text)
        self.rejected += 1
        metrics.scheduler_event("rejected")

    def chunk_restore(self, seq) -> None:
        """Put back the tokens cut off ``seq`` (a chunk that was not run)."""
        chunk = self._chunks.pop(seq.seq_id, None)
        if chunk is not None and chunk.seq is seq:
            seq.history_cache.append(chunk.tail)
            seq._num_token_ids += len(chunk.tail)

    def _restore_unadmitted(self, scheduler) -> None:
        for seq_id, chunk in list(self._chunks.items()):
            seq = chunk.seq
            if seq.session.sequences.get(seq_id) is not seq:
                del self._chunks[seq_id]  # the request ended meanwhile
            elif seq.status == MessageStatus.WAITING:
                self.chunk_restore(seq)

    def _finish_chunk(self, scheduler, seq, chunk: _Chunk) -> None:
        if seq.status != MessageStatus.LOCKED:
            # stopped or cancelled while its chunk ran: leave it as it was before the cut
            seq.history_cache.append(chunk.tail)
            seq._num_token_ids += len(chunk.tail)
            return
        seq.set_step(chunk.end)  # the chunk's KV is in the cache now
        scheduler.block_trie.allocate(seq)  # publish its full blocks, as decoding would
        seq.history_cache.append(chunk.tail)
        seq._num_token_ids += len(chunk.tail)
        scheduler._set_message_status(seq, MessageStatus.WAITING)

    def _observe(self, running, is_decoding: bool, now: float) -> None:
        """Feed the cost model with the time of the step (or decode loop) whose outputs just arrived."""
        if not running:
            return
        first_loop = id(running) != self._outputs_of
        if first_loop:
            self._outputs_of = id(running)
            self._loops_seen = 0
        self._loops_seen += 1
        started = max(self._last_output_s, self._scheduled_s[not is_decoding]) if first_loop else self._last_output_s
        ms = (now - started) * 1000.0
        if started <= 0 or ms <= 0:
            return
        if is_decoding:
            self.cost.observe_decode(len(running), ms, kv_tokens=sum(int(seq.num_history_ids) for seq in running))
        else:
            self.cost.observe_prefill(max(1, sum(int(seq.num_token_ids) for seq in running)), ms)


async def yield_until_idle(max_turns: int) -> None:
    """Give the event loop turns until no other callback is ready, at most ``max_turns``.

    Reads CPython's ready queue (``loop._ready``); on a loop without one, yields ``max_turns`` times.
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    for _ in range(max_turns):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return


def _metadata(seq) -> RequestMetadata | None:
    data = getattr(seq, "request_metadata", None)
    if not data:
        return None
    try:
        return RequestMetadata.from_dict(data)
    except ValueError as err:  # the server validated it; a foreign caller may not have
        logger.warning("session %s: ignoring bad request metadata %r: %s", seq.session_id, data, err)
        return None


def _chunkable(seq) -> bool:
    param = seq.sampling_param
    return (
        type(seq).__name__ == _PLAIN_SEQUENCE
        and len(seq.history_embeddings) == 0
        and seq.history_multimodals.empty()
        and not param.out_logits
        and param.response_format is None
        and not param.logits_processors
        and not param.return_routed_experts
        and seq.migration_request is None
        and not seq.resp_cache
        and not seq.preserve_cache
    )


def add_scheduling_middleware(app) -> None:
    app.add_middleware(SchedulingMiddleware)


def install_scheduler() -> None:
    """Plugin entry: strategy from ``SAGELLM_SCHEDULER`` (and ``SAGELLM_SCHED_*``), metadata middleware."""
    config = load_config(SchedulerConfig)
    set_sched_hooks(SagellmSchedulerHooks(config))
    register_app_hook(add_scheduling_middleware)
