"""``priority``: lower ``priority`` first, with aging so that nothing starves.

A request's effective priority falls by 1 for every ``aging_s`` seconds it has waited since it
arrived::

    effective = priority - waited_s / aging_s        (aging_s = 0: no aging)

Waiting and running requests are ordered by effective priority (ties: engine order, i.e.
arrival). Under block pressure the running request with the worst effective priority is
preempted (ties: the newest). A priority-9 request that waited ``9 * aging_s`` seconds longer
than a fresh priority-0 request goes ahead of it: a bounded wait for every request.
"""

from __future__ import annotations

from sagellm.scheduler_ir.decisions import WaitingDecision
from sagellm.scheduler_ir.snapshot import EngineSnapshot, SeqView
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy


class PriorityStrategy(SchedulingStrategy):
    name = "priority"

    def effective(self, seq: SeqView, now_s: float) -> float:
        aging = self.options.aging_s
        return seq.priority - (seq.waited_s(now_s) / aging if aging > 0 else 0.0)

    def _sorted(self, seqs: tuple[SeqView, ...], now_s: float) -> tuple[int, ...]:
        ranked = sorted(enumerate(seqs), key=lambda item: (self.effective(item[1], now_s), item[0]))
        return tuple(seq.seq_id for _, seq in ranked)

    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        return WaitingDecision(order=self._sorted(snapshot.waiting, snapshot.now_s), note="priority+aging")

    def order_running(self, snapshot: EngineSnapshot) -> tuple[int, ...]:
        return self._sorted(snapshot.running, snapshot.now_s)

    def preempt(self, snapshot: EngineSnapshot, candidates: tuple[int, ...]) -> int:
        now = snapshot.now_s
        ranked = max(enumerate(candidates), key=lambda item: (self.effective(snapshot.seq(item[1]), now), item[0]))
        return ranked[1]
