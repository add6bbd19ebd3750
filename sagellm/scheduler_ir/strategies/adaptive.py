"""``adaptive``: LMDeploy's own FCFS while the engine keeps up, a targeted strategy under load.

The engine is **busy** once ``busy_waiting`` requests wait or the waiting prompts exceed one
prefill budget, and **calm** again once at most one request with at most a quarter of a budget
waits (hysteresis: between the two thresholds the previous state holds). Calm: ``fifo``
(highest throughput, nothing to arbitrate). Busy: ``slo_aware`` if any request carries an SLO,
else ``fair`` if several tenants compete, else ``priority`` if priorities differ, else ``fifo``.

The mode is decided once per scheduling step (``step_id``) and reported by ``mode``.
"""

from __future__ import annotations

from sagellm.scheduler_ir.config import StrategyOptions
from sagellm.scheduler_ir.decisions import WaitingDecision
from sagellm.scheduler_ir.snapshot import EngineSnapshot
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy
from sagellm.scheduler_ir.strategies.fair import FairShareStrategy
from sagellm.scheduler_ir.strategies.fifo import FifoStrategy
from sagellm.scheduler_ir.strategies.priority import PriorityStrategy
from sagellm.scheduler_ir.strategies.slo_aware import SloAwareStrategy

BUSY_WAITING = 4


def is_busy(snapshot: EngineSnapshot, was_busy: bool, busy_waiting: int = BUSY_WAITING) -> bool:
    """The load state after ``snapshot`` given the previous one (see the module docstring)."""
    waiting_tokens = sum(s.pending_tokens for s in snapshot.waiting)
    if len(snapshot.waiting) >= busy_waiting or waiting_tokens > snapshot.prefill_token_budget:
        return True
    if len(snapshot.waiting) <= 1 and waiting_tokens * 4 <= snapshot.prefill_token_budget:
        return False
    return was_busy


def busy_mode(snapshot: EngineSnapshot) -> str:
    """The strategy to use while busy (see the module docstring)."""
    seqs = snapshot.waiting + snapshot.running
    if any(s.slo_ttft_ms is not None or s.slo_tpot_ms is not None for s in seqs):
        return "slo_aware"
    if len(snapshot.tenants) > 1:
        return "fair"
    if len({s.priority for s in seqs}) > 1:
        return "priority"
    return "fifo"


class AdaptiveStrategy(SchedulingStrategy):
    name = "adaptive"

    def __init__(self, options: StrategyOptions | None = None) -> None:
        super().__init__(options)
        self._inner: dict[str, SchedulingStrategy] = {
            cls.name: cls(self.options)
            for cls in (FifoStrategy, PriorityStrategy, SloAwareStrategy, FairShareStrategy)
        }
        self._busy = False
        self._step: int | None = None
        self.mode = "fifo"

    def _current(self, snapshot: EngineSnapshot) -> SchedulingStrategy:
        if snapshot.step_id != self._step:
            self._step = snapshot.step_id
            self._busy = is_busy(snapshot, self._busy)
            self.mode = busy_mode(snapshot) if self._busy else "fifo"
        return self._inner[self.mode]

    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        decision = self._current(snapshot).plan_waiting(snapshot)
        return WaitingDecision(
            order=decision.order, deferred=decision.deferred, rejected=decision.rejected,
            chunk_limits=decision.chunk_limits, step_token_budget=decision.step_token_budget,
            note=f"adaptive:{self.mode}:{decision.note}",
        )

    def order_running(self, snapshot: EngineSnapshot) -> tuple[int, ...]:
        return self._current(snapshot).order_running(snapshot)

    def preempt(self, snapshot: EngineSnapshot, candidates: tuple[int, ...]) -> int:
        return self._current(snapshot).preempt(snapshot, candidates)

    def choose_prefill(self, snapshot: EngineSnapshot, engine_choice: bool) -> bool:
        return self._current(snapshot).choose_prefill(snapshot, engine_choice)

    def describe(self) -> str:
        return f"adaptive({self.mode})"
