"""``fair``: weighted fair share of the running batch per tenant.

A tenant's share is the KV tokens its running requests hold, divided by its weight
(``tenant_weights``, default 1; requests without a tenant share the anonymous tenant '').
Waiting requests are admitted one at a time to the tenant with the smallest share, which then
grows by the request's tokens (ties: engine order). Running requests get blocks smallest share
first; under block pressure the newest request of the tenant with the largest share is preempted.
"""

from __future__ import annotations

from sagellm.scheduler_ir.decisions import WaitingDecision
from sagellm.scheduler_ir.snapshot import EngineSnapshot, SeqView
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy


class FairShareStrategy(SchedulingStrategy):
    name = "fair"

    def usage(self, snapshot: EngineSnapshot) -> dict[str, float]:
        """Tenant -> KV tokens held by its running requests (every tenant present, 0 if none run)."""
        held = {tenant: 0.0 for tenant in snapshot.tenants}
        for seq in snapshot.running:
            held[seq.tenant or ""] += seq.total_tokens
        return held

    def share(self, held: dict[str, float], seq: SeqView) -> float:
        return held[seq.tenant or ""] / self.options.weight(seq.tenant)

    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        held = self.usage(snapshot)
        remaining = list(enumerate(snapshot.waiting))
        order = []
        while remaining:
            pos = min(range(len(remaining)), key=lambda k: (self.share(held, remaining[k][1]), remaining[k][0]))
            _, seq = remaining.pop(pos)
            order.append(seq.seq_id)
            held[seq.tenant or ""] += seq.total_tokens
        return WaitingDecision(order=tuple(order), note="fair-share")

    def order_running(self, snapshot: EngineSnapshot) -> tuple[int, ...]:
        held = self.usage(snapshot)
        ranked = sorted(enumerate(snapshot.running), key=lambda item: (self.share(held, item[1]), item[0]))
        return tuple(seq.seq_id for _, seq in ranked)

    def preempt(self, snapshot: EngineSnapshot, candidates: tuple[int, ...]) -> int:
        held = self.usage(snapshot)
        ranked = max(enumerate(candidates), key=lambda item: (self.share(held, snapshot.seq(item[1])), item[0]))
        return ranked[1]
