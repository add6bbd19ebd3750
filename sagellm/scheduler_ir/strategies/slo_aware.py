"""``slo_aware``: deadline-driven scheduling with admission control and chunked long prefills.

Estimates come from the snapshot's ``CostEstimate`` (learned from the engine's own steps).

- **Waiting** requests go in order of TTFT slack (least first)::

      ttft_slack = slo_ttft_ms - waited_ms - inflight_ms - prefill_ms(pending tokens)

  (``default_ttft_ms`` stands in for requests without a TTFT target, so they are not starved).
  Preempted requests, which already produced tokens, go first. Prompts whose prefill is under
  way (earlier chunks hold KV blocks) take their deadline place like the rest -- a short
  interactive prompt rides in the same step as the next chunk of a document -- except under
  block pressure, where they go first in engine order: a later candidate can only evict the
  blocks of sequences behind it, so a split prompt always progresses and two split prompts
  never take turns evicting each other.
- **Admission control** has two levels. A request that *cannot* meet its SLO -- its wait plus
  its own prefill at the fastest recent rate already past its TTFT target, or its TPOT target
  below the fastest recent decode loops -- is rejected (the client gets an error naming the reason)
  or, with ``on_unattainable=defer``, held back while anything else waits (and rejected after
  ``max_defer_s``). A request that would miss only because of the queue ahead of it (its first
  token estimated by simulating the prefill steps, :meth:`SloAwareStrategy.first_token_ms`)
  is *late*: it goes behind every request that can still make its target, and is served.
  Either way it does not delay the requests that can. (Rejecting on the queue estimate turned
  away interactive requests that would have met their target: at 1.5-2.5 req/s on the 2-core
  CPU, 6-8 of 42 per rate, more than fifo missed in all.)
- **Running** requests get blocks in order of TPOT slack (least first); under block pressure
  the one with the most slack is preempted::

      tpot_slack = slo_tpot_ms * (1 - R) * (generated - 1 + L) - ms_since_first_token - L * decode_loop_ms

  where L is the number of tokens the next decode round produces (its loops, at most the tokens
  left of the request's output) and R the ``tpot_reserve``, the share of the allowance kept
  against the error of the step cost estimates.
- **Chunking** (``chunk_tokens`` > 0): prompts longer than ``chunk_tokens`` are prefilled
  ``chunk_tokens`` at a time, and the prefill step is sized so it does not stall the running requests past their TPOT
  targets (the smallest ``tpot_slack``).
- **Packing a step**: LMDeploy prefills every admitted prompt in one step, and every first token
  of the step comes at its end. A fresh prompt that would push a prompt already in the step past
  its TTFT target, or stall a running request past its TPOT target, is held back to a later step
  when it can afford one more decode round, or misses its own target anyway (then for at most
  ``max_defer_s``). Running requests that miss their TPOT even at the fastest recent decode speed
  are not protected (:meth:`SloAwareStrategy.tpot_lost`).
- **Prefill or decode**: decode first when a prefill now would break a running request's TPOT
  target and the most urgent waiting request can afford one decode step; prefill when the
  engine would decode but a waiting request's TTFT cannot wait one more decode step.
- **Ending decode rounds**: a round ends as soon as a waiting request could join it (the default
  policy waits until the loops it saves outweigh the batch, ``rounds.round_cut``): a waiting
  request's TTFT clock runs while the round goes on, and whether it is then prefilled is still
  decided by ``choose_prefill``.
- **Pacing decode rounds** (``decode_pacing``, off by default): a running request whose TPOT target is at risk --
  its output so far plus its remaining tokens at the current loop time past ``slo_tpot_ms`` times
  its output length -- gets the batch thinned: the running request whose absence speeds a loop up
  the most (the longest history: attention reads every token of it) sits out the next round, if
  its own target still holds after waiting that round and decoding the rest at the full batch's
  speed. Repeated until no target is at risk or nobody can wait; at least one request decodes.
  (Measured on the 2-core CPU: two 70-token requests decoded at 8.4 ms per token alone, 11.0 with
  one 1,500-token document decoding beside them, 12.5 with two; in a goodput run at 2 req/s the
  interactive requests whose decoding overlapped a document's missed their 9.92 ms TPOT target 8
  times in 14, the others 6 in 57.) Measured with and without it in one interleaved goodput run
  (goodput-20261124T015829Z, 100 requests per rate at 1.5-3 req/s): those overlapped requests
  missed 23 of 63 times with pacing and 23 of 55 without, and attainment went 97/73/79/54 % with
  against 90/78/68/80 % without -- no gain through the run's noise, and at 3 req/s, where the
  engine is saturated, the separate rounds of the requests held out cost throughput. Hence off.
- **Decode rounds and chunks**: both stay LMDeploy's by default (rounds of 16 decode steps, prompts
  prefilled whole; ``--sched-decode-loops`` and ``--sched-chunk-tokens`` change them). On the
  2-core CPU with the tiny model a step has ~10 ms of fixed cost, so 4-step rounds and 256-token
  chunks made every long prompt and every running request pay more steps: in one goodput probe
  (fixed SLOs, 60 requests per rate) slo_aware with them attained 72-78% at 1-2 req/s against
  fifo's 83-93%; without them, in another probe on the same SLOs, 83-87% against fifo's 70-83%
  (1.18-1.25x fifo's goodput at 1.5-2.5 req/s).
"""

from __future__ import annotations

import math

from sagellm.scheduler_ir.decisions import ENGINE_BUDGET, WaitingDecision
from sagellm.scheduler_ir.rounds import RoundCut, RoundProgress, round_cut
from sagellm.scheduler_ir.snapshot import EngineSnapshot, SeqView
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy

#: Bound on the prefill steps :meth:`SloAwareStrategy.first_token_ms` simulates.
MAX_SIMULATED_STEPS = 256


class SloAwareStrategy(SchedulingStrategy):
    name = "slo_aware"
    decode_loops = None  # LMDeploy's rounds (see "Decode rounds and chunks" above)

    # ---------------------------------------------------------------- estimates

    def ttft_slack_ms(self, snapshot: EngineSnapshot, seq: SeqView) -> float:
        """Time to spare before the TTFT target; without a target, ``default_ttft_ms`` minus the wait
        (no prefill term, so requests without targets keep their arrival order among themselves)."""
        if seq.slo_ttft_ms is None:
            return self.options.default_ttft_ms - seq.waited_s(snapshot.now_s) * 1000.0
        return self.ttft_margin_ms(snapshot, seq, snapshot.cost.prefill_ms(seq.pending_tokens))

    def ttft_margin_ms(self, snapshot: EngineSnapshot, seq: SeqView, first_token_ms: float) -> float:
        """Time to spare before ``seq``'s TTFT target (``default_ttft_ms`` without one) if its first token
        comes ``first_token_ms`` after the step in flight ends."""
        target = seq.slo_ttft_ms if seq.slo_ttft_ms is not None else self.options.default_ttft_ms
        return target - seq.waited_s(snapshot.now_s) * 1000.0 - snapshot.inflight_ms - first_token_ms

    def tpot_slack_ms(self, snapshot: EngineSnapshot, seq: SeqView) -> float:
        if seq.slo_tpot_ms is None or seq.first_token_s is None:
            return math.inf
        # the next round's tokens, at most what is left of the output: a request one token from its
        # end gains no allowance from a round's worth of tokens it will not produce (measured: two
        # interactive requests let a document's 180 ms prefill in before their last token, and
        # missed their TPOT target by it)
        loops = min(snapshot.decode_loops, max(1, seq.tokens_left))
        # the reserve: planned to the limit, two 512-token chunks let in on an estimated 111 ms of
        # slack took 115 ms, and the interactive request in decode missed its target
        allowed = seq.slo_tpot_ms * (1.0 - self.options.tpot_reserve) * (max(0, seq.generated_tokens - 1) + loops)
        elapsed = _ms_since_first_token(snapshot, seq)
        return allowed - elapsed - loops * snapshot.cost.decode_loop_ms(len(snapshot.running))

    def stall_budget_ms(self, snapshot: EngineSnapshot) -> float:
        """How long a prefill step may stall the running requests before one misses its TPOT target
        (requests that miss it anyway, :meth:`tpot_lost`, are not protected)."""
        return min((self.tpot_slack_ms(snapshot, s) for s in snapshot.running if not self.tpot_lost(snapshot, s)),
                   default=math.inf)

    @staticmethod
    def tpot_lost(snapshot: EngineSnapshot, seq: SeqView) -> bool:
        """Whether ``seq`` misses its TPOT target even if each of its remaining tokens came as fast as the
        engine's fastest recent decode loops (its whole output counted, as the client measures TPOT)."""
        if seq.slo_tpot_ms is None or seq.first_token_s is None or seq.max_new_tokens <= 1:
            return False
        elapsed = _ms_since_first_token(snapshot, seq)
        fastest = snapshot.cost.decode_floor_ms or snapshot.cost.decode_loop_ms(1)
        return elapsed + seq.tokens_left * fastest > seq.slo_tpot_ms * (seq.max_new_tokens - 1)

    def _unattainable(self, snapshot: EngineSnapshot, seq: SeqView) -> str | None:
        """Why ``seq`` cannot meet its SLO whatever this strategy does, or None.

        Only certain misses: its TPOT target below the fastest decode loops the engine ran
        recently (``CostEstimate.decode_floor_ms``), or its wait so far plus its own prefill at the
        fastest recent rate per token (``CostEstimate.prefill_floor_ms_per_token``) already past its
        TTFT target. Neither the step in flight nor the fitted prefill line counts here: both are
        estimates, and a wrong one turns away requests that would be served in time. A request that
        would miss only because of the queue ahead of it is not rejected here (see :meth:`plan_waiting`).
        """
        cost = snapshot.cost
        if seq.slo_tpot_ms is not None and seq.slo_tpot_ms < cost.decode_floor_ms:
            return (
                f"slo_tpot_ms={seq.slo_tpot_ms:g} is below the engine's fastest recent decode time per token "
                f"(about {cost.decode_floor_ms:.1f} ms)"
            )
        if seq.slo_ttft_ms is not None:
            waited = seq.waited_s(snapshot.now_s) * 1000.0
            soonest = waited + cost.prefill_floor_ms_per_token * seq.pending_tokens
            if soonest > seq.slo_ttft_ms:
                return (
                    f"slo_ttft_ms={seq.slo_ttft_ms:g} cannot be met: waited {waited:.0f} ms, first token "
                    f"at the soonest after {soonest:.0f} ms ({seq.pending_tokens} prompt tokens)"
                )
        return None

    def first_token_ms(
        self, snapshot: EngineSnapshot, order: list[SeqView], budget: int, limits: dict[int, int]
    ) -> dict[int, float]:
        """When each of ``order`` gets its first token, in ms from now, if prefilled in that order.

        Simulates the steps the executor builds: each prefill step takes prompts in order up to
        ``budget`` tokens (a split prompt at most its ``limits`` entry per step; one that cannot
        be split and does not fit waits for the next step unless it comes first), and while
        sequences run, a decode round separates two prefill steps unless a waiting prompt's TTFT
        cannot afford it (as :meth:`choose_prefill` decides). A prompt not done within
        :data:`MAX_SIMULATED_STEPS` steps gets ``inf``.
        """
        cost = snapshot.cost
        remaining = {s.seq_id: s.pending_tokens for s in order}
        done: dict[int, float] = {}
        clock = snapshot.inflight_ms
        batch = len(snapshot.running)
        for _ in range(MAX_SIMULATED_STEPS):
            used, finished = 0, []
            for seq in order:
                left = remaining[seq.seq_id]
                if left == 0:
                    continue
                take = min(left, limits.get(seq.seq_id, left), budget - used)
                if take < left and not seq.chunkable:
                    take = left if used == 0 else 0
                if take <= 0:
                    break
                used += take
                remaining[seq.seq_id] = left - take
                if take == left:
                    finished.append(seq.seq_id)
            clock += cost.prefill_ms(used)
            done.update((seq_id, clock) for seq_id in finished)
            if len(done) == len(order):
                break
            batch += len(finished)
            round_ms = snapshot.decode_loops * cost.decode_loop_ms(batch) if batch else 0.0
            urgent = any(
                s.slo_ttft_ms - s.waited_s(snapshot.now_s) * 1000.0 - clock - cost.prefill_ms(remaining[s.seq_id])
                <= round_ms
                for s in order
                if remaining[s.seq_id] and s.slo_ttft_ms is not None
            )
            if not urgent:  # as choose_prefill: no decode round when a waiting TTFT cannot afford one
                clock += round_ms
        return {s.seq_id: done.get(s.seq_id, math.inf) for s in order}

    def _step_shape(self, snapshot: EngineSnapshot) -> tuple[int, dict[int, int]]:
        """This step's prefill token budget and per-prompt chunk limits.

        Prompts longer than ``chunk_tokens`` are split so a request arriving meanwhile waits for
        one chunk, not a whole document; the step is sized so it does not stall the running
        requests past their TPOT targets.
        """
        options = self.options
        if options.chunk_tokens <= 0:
            return snapshot.prefill_token_budget, {}
        limits = {
            s.seq_id: options.chunk_tokens
            for s in snapshot.waiting
            if s.chunkable and s.pending_tokens > options.chunk_tokens
        }
        budget = snapshot.prefill_token_budget
        stall = self.stall_budget_ms(snapshot)
        if not math.isinf(stall):
            budget = min(budget, max(snapshot.block_size, self._tokens_within(snapshot.cost, stall)))
        return budget, limits

    def _all_meet(self, snapshot: EngineSnapshot, order: list[SeqView], budget: int, limits: dict[int, int]) -> bool:
        """Whether every prompt in ``order`` with a TTFT target gets its first token in time."""
        if all(s.slo_ttft_ms is None or s.generated_tokens > 0 for s in order):
            return True
        times = self.first_token_ms(snapshot, order, budget, limits)
        return all(
            s.seq_id not in times or s.waited_s(snapshot.now_s) * 1000.0 + times[s.seq_id] <= s.slo_ttft_ms
            for s in order
            if s.slo_ttft_ms is not None and s.generated_tokens == 0
        )

    @staticmethod
    def _blocks_scarce(snapshot: EngineSnapshot, seqs: list[SeqView]) -> bool:
        """Whether the free KV blocks cannot hold the whole prompts of ``seqs`` (0 total blocks: unknown)."""
        if snapshot.total_blocks == 0:
            return False
        size = snapshot.block_size
        needed = sum(max(0, -(-(s.computed_tokens + s.pending_tokens) // size) - s.num_blocks) for s in seqs)
        return needed > snapshot.free_blocks

    # ---------------------------------------------------------------- decisions

    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        options = self.options
        index = {s.seq_id: i for i, s in enumerate(snapshot.waiting)}
        resumed = [s for s in snapshot.waiting if s.generated_tokens > 0]
        started = [s for s in snapshot.waiting if s.generated_tokens == 0 and _prefill_started(s)]
        fresh = [s for s in snapshot.waiting if s.generated_tokens == 0 and not _prefill_started(s)]

        def by_slack(seqs: list[SeqView]) -> list[SeqView]:
            return sorted(seqs, key=lambda s: (self.ttft_slack_ms(snapshot, s), index[s.seq_id]))

        # Deadline order over every prompt. Under block pressure, prompts whose prefill is under
        # way go first in engine order: a later candidate can only evict the blocks of sequences
        # behind it, so a split prompt always progresses and two never take turns evicting each other.
        if started and self._blocks_scarce(snapshot, started + fresh):
            candidates = started + by_slack(fresh)
        else:
            candidates = by_slack(started + fresh)
        budget, limits = self._step_shape(snapshot)
        admitted: list[SeqView] = list(resumed)
        late: list[SeqView] = []
        deferred: list[int] = []
        rejected: dict[int, str] = {}
        for seq in candidates:
            # a prompt whose prefill is under way is never turned away: its earlier chunks are paid for
            reason = None if _prefill_started(seq) else self._unattainable(snapshot, seq)
            if reason is not None:
                if options.on_unattainable == "defer" and seq.waited_s(snapshot.now_s) < options.max_defer_s:
                    deferred.append(seq.seq_id)
                else:
                    rejected[seq.seq_id] = reason
                continue
            if not self._all_meet(snapshot, admitted + [seq], budget, limits):
                late.append(seq)  # behind everything that can still make it, but served
                continue
            admitted.append(seq)
        queue = admitted + late
        held = self._held_back(snapshot, queue, budget, limits)
        order = [s.seq_id for s in queue if s.seq_id not in held]
        deferred += [s.seq_id for s in queue if s.seq_id in held]
        if not order and deferred:
            order, deferred = deferred, []  # nothing attainable waits: do not idle
        note = "edf" + (f", {len(late)} late" if late else "") + (f", {len(held)} held" if held else "")
        return WaitingDecision(
            order=tuple(order), deferred=tuple(deferred), rejected=rejected,
            chunk_limits={k: v for k, v in limits.items() if k in order},
            step_token_budget=budget if options.chunk_tokens > 0 else ENGINE_BUDGET,
            note=note,
        )

    def _held_back(self, snapshot: EngineSnapshot, order: list[SeqView], budget: int,
                   limits: dict[int, int]) -> set[int]:
        """Fresh prompts left out of this prefill step because they would make it miss targets it can meet.

        Going down ``order`` and packing the step as the engine would, a prompt is held back when
        adding it would push a prompt already in the step past its TTFT target, or stall a running
        request past its TPOT target (:meth:`stall_budget_ms`), either of which the step without it
        meets -- and when it can itself wait for the next prefill step, one decode round later, or
        misses its own target even in this step (then for at most ``max_defer_s``: it is served late).
        (Packed together, a document of 1,500 tokens made a 80-token interactive prompt take the
        document's 190 ms to its first token, double its target, and stalled every running request.)
        The first prompt of a step is never held back (``choose_prefill`` decides whether to prefill).
        """
        cost = snapshot.cost
        now = snapshot.now_s
        stall = self.stall_budget_ms(snapshot)
        round_ms = snapshot.decode_loops * cost.decode_loop_ms(len(snapshot.running) + 1)

        def meets(seq: SeqView, first_token_ms: float) -> bool:
            return self.ttft_margin_ms(snapshot, seq, first_token_ms) >= 0.0

        held: set[int] = set()
        step: list[SeqView] = []
        used = 0
        for seq in order:
            take = min(seq.pending_tokens, limits.get(seq.seq_id, seq.pending_tokens), max(0, budget - used))
            if take <= 0:
                break
            if step and seq.generated_tokens == 0 and not _prefill_started(seq):
                before, after = cost.prefill_ms(used), cost.prefill_ms(used + take)
                hurts = (before <= stall < after) or any(
                    s.generated_tokens == 0 and meets(s, before) and not meets(s, after) for s in step
                )
                can_wait = meets(seq, before + round_ms + cost.prefill_ms(take))
                lost = not meets(seq, after) and seq.waited_s(now) < self.options.max_defer_s
                if hurts and (can_wait or lost):
                    held.add(seq.seq_id)
                    continue
            step.append(seq)
            used += take
        return held

    @staticmethod
    def _tokens_within(cost, ms: float) -> int:
        if cost.prefill_ms_per_token <= 0:
            return 1 << 30
        return max(0, int((ms - cost.prefill_fixed_ms) / cost.prefill_ms_per_token))

    def order_running(self, snapshot: EngineSnapshot) -> tuple[int, ...]:
        ranked = sorted(enumerate(snapshot.running), key=lambda item: (self.tpot_slack_ms(snapshot, item[1]), item[0]))
        return tuple(seq.seq_id for _, seq in ranked)

    def preempt(self, snapshot: EngineSnapshot, candidates: tuple[int, ...]) -> int:
        ranked = max(enumerate(candidates), key=lambda item: (self.tpot_slack_ms(snapshot, snapshot.seq(item[1])), item[0]))
        return ranked[1]

    # ---------------------------------------------------------------- decode pacing

    @staticmethod
    def tpot_allowance_left_ms(snapshot: EngineSnapshot, seq: SeqView, loop_ms: float, pause_ms: float = 0.0) -> float:
        """What is left of ``seq``'s whole-output TPOT allowance if it waits ``pause_ms`` and then decodes
        its remaining tokens at ``loop_ms`` each (negative: it misses its target)."""
        elapsed = _ms_since_first_token(snapshot, seq)
        return seq.slo_tpot_ms * (seq.max_new_tokens - 1) - elapsed - pause_ms - seq.tokens_left * loop_ms

    def hold_from_round(self, snapshot: EngineSnapshot) -> frozenset[int]:
        """Who sits out the next decode round (see "Pacing decode rounds" above)."""
        if not self.options.decode_pacing or len(snapshot.running) < 2:
            return frozenset()
        cost = snapshot.cost
        paced = [s for s in snapshot.running
                 if s.slo_tpot_ms is not None and s.first_token_s is not None and s.max_new_tokens > 1]
        if len(paced) < 2:
            return frozenset()
        protected = [t for t in paced if not self.tpot_lost(snapshot, t)]
        batch, kv_tokens = len(snapshot.running), sum(s.total_tokens for s in snapshot.running)
        held: set[int] = set()
        while batch > 1:
            current = cost.decode_loop_ms(batch, kv_tokens)
            at_risk = {t.seq_id for t in protected
                       if t.seq_id not in held and self.tpot_allowance_left_ms(snapshot, t, current) < 0.0}
            if not at_risk:
                break
            best: tuple[float, SeqView] | None = None
            for seq in paced:
                if seq.seq_id in at_risk or seq.seq_id in held:
                    continue
                without = cost.decode_loop_ms(batch - 1, kv_tokens - seq.total_tokens)
                pause = snapshot.decode_loops * without
                if current - without <= 0.0 or self.tpot_allowance_left_ms(snapshot, seq, current, pause) < 0.0:
                    continue
                if best is None or current - without > best[0]:
                    best = (current - without, seq)
            if best is None:
                break
            held.add(best[1].seq_id)
            batch, kv_tokens = batch - 1, kv_tokens - best[1].total_tokens
        return frozenset(held)

    def cut_round(self, progress: RoundProgress) -> RoundCut | None:
        return round_cut(progress, saved_loops_per_live=0.0)  # any request that fits: its TTFT clock runs

    def choose_prefill(self, snapshot: EngineSnapshot, engine_choice: bool) -> bool:
        fresh = [s for s in snapshot.waiting if s.generated_tokens == 0]
        if not fresh or not snapshot.running or len(fresh) < len(snapshot.waiting):
            return engine_choice
        cost = snapshot.cost
        urgent = min(fresh, key=lambda s: self.ttft_slack_ms(snapshot, s))
        urgent_slack = self.ttft_slack_ms(snapshot, urgent)
        decode_step_ms = snapshot.decode_loops * cost.decode_loop_ms(len(snapshot.running))
        first_chunk = urgent.pending_tokens
        if self.options.chunk_tokens > 0 and urgent.chunkable:
            first_chunk = min(first_chunk, self.options.chunk_tokens)
        if engine_choice and self.stall_budget_ms(snapshot) < cost.prefill_ms(first_chunk) and urgent_slack > decode_step_ms:
            return False
        if not engine_choice and urgent_slack <= decode_step_ms:
            return True
        return engine_choice


def _ms_since_first_token(snapshot: EngineSnapshot, seq: SeqView) -> float:
    """Time from ``seq``'s first token to the end of the step in flight."""
    return max(0.0, snapshot.now_s - seq.first_token_s) * 1000.0 + snapshot.inflight_ms


def _prefill_started(seq: SeqView) -> bool:
    """A waiting prompt whose earlier chunks are computed and still hold blocks."""
    return seq.computed_tokens > 0 and seq.num_blocks > 0
