"""``slo_aware``: deadline-driven scheduling with admission control and chunked long prefills.

Estimates come from the snapshot's ``CostEstimate`` (learned from the engine's own steps).

- **Waiting** requests go in order of TTFT slack (least first)::

      ttft_slack = slo_ttft_ms - waited_ms - inflight_ms - prefill_ms(pending tokens)

  (``default_ttft_ms`` stands in for requests without a TTFT target, so they are not starved).
  Preempted requests, which already produced tokens, go first, then prompts whose prefill is
  under way (earlier chunks hold KV blocks), in engine order: a later candidate can only evict
  the blocks of sequences behind it, so a split prompt always progresses and two split prompts
  never take turns evicting each other.
- **Admission control**: walking that order, a request whose estimated first token
  (waited + the prefills ahead of it + its own) comes after its TTFT target, or whose TPOT
  target is below the engine's decode time per token, cannot meet its SLO. It is rejected
  (the client gets an error naming the reason) or, with ``on_unattainable=defer``, held back
  while anything attainable waits (and rejected after ``max_defer_s``). Either way it does not
  delay the requests behind it.
- **Running** requests get blocks in order of TPOT slack (least first); under block pressure
  the one with the most slack is preempted::

      tpot_slack = slo_tpot_ms * (generated - 1 + L) - ms_since_first_token - L * decode_loop_ms

  where L is the number of tokens the next decode step produces.
- **Chunking**: prompts longer than ``chunk_tokens`` are prefilled ``chunk_tokens`` at a time,
  and the prefill step is sized so it does not stall the running requests past their TPOT
  targets (the smallest ``tpot_slack``).
- **Prefill or decode**: decode first when a prefill now would break a running request's TPOT
  target and the most urgent waiting request can afford one decode step; prefill when the
  engine would decode but a waiting request's TTFT cannot wait one more decode step.
- **Short decode rounds**: LMDeploy admits new requests only between decode rounds of 16 steps
  (~100 ms on the 2-core CPU with a tiny model), which alone can spend most of a tight TTFT
  target; this strategy asks for rounds of :attr:`decode_loops` steps.
"""

from __future__ import annotations

import math

from sagellm.scheduler_ir.decisions import ENGINE_BUDGET, WaitingDecision
from sagellm.scheduler_ir.snapshot import EngineSnapshot, SeqView
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy


class SloAwareStrategy(SchedulingStrategy):
    name = "slo_aware"
    decode_loops = 4

    # ---------------------------------------------------------------- estimates

    def ttft_slack_ms(self, snapshot: EngineSnapshot, seq: SeqView) -> float:
        """Time to spare before the TTFT target; without a target, ``default_ttft_ms`` minus the wait
        (no prefill term, so requests without targets keep their arrival order among themselves)."""
        waited_ms = seq.waited_s(snapshot.now_s) * 1000.0
        if seq.slo_ttft_ms is None:
            return self.options.default_ttft_ms - waited_ms
        return seq.slo_ttft_ms - waited_ms - snapshot.inflight_ms - snapshot.cost.prefill_ms(seq.pending_tokens)

    def tpot_slack_ms(self, snapshot: EngineSnapshot, seq: SeqView) -> float:
        if seq.slo_tpot_ms is None or seq.first_token_s is None:
            return math.inf
        loops = snapshot.decode_loops
        allowed = seq.slo_tpot_ms * (max(0, seq.generated_tokens - 1) + loops)
        elapsed = max(0.0, snapshot.now_s - seq.first_token_s) * 1000.0 + snapshot.inflight_ms
        return allowed - elapsed - loops * snapshot.cost.decode_loop_ms(len(snapshot.running))

    def stall_budget_ms(self, snapshot: EngineSnapshot) -> float:
        """How long a prefill step may stall the running requests before one misses its TPOT target."""
        return min((self.tpot_slack_ms(snapshot, s) for s in snapshot.running), default=math.inf)

    def _unattainable(self, snapshot: EngineSnapshot, seq: SeqView, queue_ms: float, batch: int, ahead: int) -> str | None:
        cost = snapshot.cost
        if seq.slo_tpot_ms is not None:
            per_token = cost.decode_loop_ms(batch + 1)
            if per_token > seq.slo_tpot_ms:
                return (
                    f"slo_tpot_ms={seq.slo_tpot_ms:g} is below the engine's decode time per token "
                    f"(about {per_token:.0f} ms at batch {batch + 1})"
                )
        if seq.slo_ttft_ms is not None:
            waited = seq.waited_s(snapshot.now_s) * 1000.0
            estimate = waited + queue_ms + cost.prefill_ms(seq.pending_tokens)
            if estimate > seq.slo_ttft_ms:
                return (
                    f"slo_ttft_ms={seq.slo_ttft_ms:g} cannot be met: waited {waited:.0f} ms, first token expected "
                    f"after about {estimate:.0f} ms ({ahead} request(s) ahead, {seq.pending_tokens} prompt tokens)"
                )
        return None

    # ---------------------------------------------------------------- decisions

    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        options, cost = self.options, snapshot.cost
        index = {s.seq_id: i for i, s in enumerate(snapshot.waiting)}
        resumed = [s for s in snapshot.waiting if s.generated_tokens > 0]
        started = [s for s in snapshot.waiting if s.generated_tokens == 0 and _prefill_started(s)]
        fresh = sorted(
            (s for s in snapshot.waiting if s.generated_tokens == 0 and not _prefill_started(s)),
            key=lambda s: (self.ttft_slack_ms(snapshot, s), index[s.seq_id]),
        )
        order: list[int] = []
        deferred: list[int] = []
        rejected: dict[int, str] = {}
        queue_ms = snapshot.inflight_ms
        batch = len(snapshot.running)
        for seq in resumed:
            order.append(seq.seq_id)
            queue_ms += cost.prefill_ms(seq.pending_tokens)
            batch += 1
        for seq in started + fresh:
            reason = self._unattainable(snapshot, seq, queue_ms, batch, len(order))
            if reason is None:
                order.append(seq.seq_id)
                queue_ms += cost.prefill_ms(seq.pending_tokens)
                batch += 1
            elif options.on_unattainable == "defer" and seq.waited_s(snapshot.now_s) < options.max_defer_s:
                deferred.append(seq.seq_id)
            else:
                rejected[seq.seq_id] = reason
        if not order and deferred:
            order, deferred = deferred, []  # nothing attainable waits: do not idle
        limits: dict[int, int] = {}
        budget = ENGINE_BUDGET
        if options.chunk_tokens > 0:
            limits = {
                s.seq_id: options.chunk_tokens
                for s in snapshot.waiting
                if s.seq_id in order and s.chunkable and s.pending_tokens > options.chunk_tokens
            }
            stall = self.stall_budget_ms(snapshot)
            if not math.isinf(stall):
                budget = min(snapshot.prefill_token_budget, max(snapshot.block_size, self._tokens_within(cost, stall)))
        return WaitingDecision(
            order=tuple(order), deferred=tuple(deferred), rejected=rejected, chunk_limits=limits,
            step_token_budget=budget, note="edf",
        )

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


def _prefill_started(seq: SeqView) -> bool:
    """A waiting prompt whose earlier chunks are computed and still hold blocks."""
    return seq.computed_tokens > 0 and seq.num_blocks > 0
