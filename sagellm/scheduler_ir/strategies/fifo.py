"""``fifo``: LMDeploy's own first-come-first-served scheduling, unchanged."""

from __future__ import annotations

from sagellm.scheduler_ir.decisions import WaitingDecision
from sagellm.scheduler_ir.snapshot import EngineSnapshot
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy


class FifoStrategy(SchedulingStrategy):
    """Waiting requests in arrival order (the engine's order), no chunking, no admission control."""

    name = "fifo"
    stock = True

    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        return WaitingDecision(order=snapshot.ids(snapshot.waiting), note="fcfs")
