"""``StepExecutor``: the API the engine seam calls, once per scheduling decision.

It asks the strategy, checks the answer, turns it into the step's IR, runs the optimizer
passes and traces the plan. The engine adapter then carries out what comes back::

    snapshot ──▶ strategy.plan_waiting ──▶ build_prefill_plan ──▶ merge_kv_moves ──▶ split_long_prefills
                                                                                         │
                         PrefillStep(order, chunk_ends, deferred, rejected, plan) ◀──────┘ ──▶ trace

Nothing here imports an engine; tests drive it with hand-made snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sagellm.core.ir import ExecutionPlan, IRNode, IRNodeKind
from sagellm.scheduler_ir.builder import build_decode_plan, build_prefill_plan, node_seq_id, prefill_node_id
from sagellm.scheduler_ir.decisions import ENGINE_BUDGET
from sagellm.scheduler_ir.passes import merge_kv_moves, split_long_prefills
from sagellm.scheduler_ir.snapshot import EngineSnapshot
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy
from sagellm.scheduler_ir.trace import PlanTracer, trace_record


class StrategyError(ValueError):
    """A strategy returned a decision that does not fit the snapshot (a bug in the strategy)."""


@dataclass(frozen=True)
class PrefillStep:
    """What the engine should do with its waiting queue this step.

    Attributes:
        plan: the step's IR after the passes.
        order: sequences to try for prefill, in order (those that fit the step).
        chunk_ends: sequence -> absolute token position its prefill stops at this step (split prompts).
        deferred: sequences held back (they stay waiting).
        rejected: sequence -> reason (the request must end with an error carrying it).
        remainders: the parts of split prompts left for later steps.
    """

    plan: ExecutionPlan
    order: tuple[int, ...]
    chunk_ends: dict[int, int] = field(default_factory=dict)
    deferred: tuple[int, ...] = ()
    rejected: dict[int, str] = field(default_factory=dict)
    remainders: tuple[IRNode, ...] = ()


class StepExecutor:
    """Runs a strategy over snapshots (see the module docstring).

    Args:
        strategy: the policy.
        tracer: where plans are traced (None: not traced).
    """

    def __init__(self, strategy: SchedulingStrategy, tracer: PlanTracer | None = None) -> None:
        self.strategy = strategy
        self.tracer = tracer

    @property
    def passthrough(self) -> bool:
        """True when consulting the executor cannot change what the engine does on its own."""
        return self.strategy.stock and self.tracer is None

    def prefill_step(self, snapshot: EngineSnapshot) -> PrefillStep:
        decision = self.strategy.plan_waiting(snapshot)
        try:
            decision.check_covers(snapshot.ids(snapshot.waiting))
        except ValueError as exc:
            raise StrategyError(f"strategy {self.strategy.name!r}: {exc}") from None
        metadata = {
            "kind": "prefill",
            "strategy": self.strategy.describe(),
            "waiting": len(snapshot.waiting),
            "running": len(snapshot.running),
            "deferred": len(decision.deferred),
            "rejected": len(decision.rejected),
            "note": decision.note,
        }
        budget = decision.step_token_budget or snapshot.prefill_token_budget
        plan = merge_kv_moves(build_prefill_plan(snapshot, decision.order, token_budget=budget, metadata=metadata))
        order = decision.order
        chunk_ends: dict[int, int] = {}
        remainders: tuple[IRNode, ...] = ()
        if decision.chunk_limits or decision.step_token_budget != ENGINE_BUDGET:
            split = split_long_prefills(
                plan,
                step_budget=budget,
                block_size=snapshot.block_size,
                chunk_limits={prefill_node_id(k): v for k, v in decision.chunk_limits.items()},
                chunkable={prefill_node_id(s.seq_id) for s in snapshot.waiting if s.chunkable},
            )
            plan, remainders, chunk_ends = split.plan, split.remainders, split.chunk_ends()
            order = tuple(node_seq_id(n.node_id) for n in plan.graph.by_kind(IRNodeKind.PREFILL_CHUNK))
        step = PrefillStep(
            plan=plan, order=order, chunk_ends=chunk_ends, deferred=decision.deferred,
            rejected=dict(decision.rejected), remainders=remainders,
        )
        if self.tracer is not None:
            self.tracer.write(
                trace_record(
                    "prefill", self.strategy.describe(), plan, snapshot.waiting + snapshot.running,
                    order=step.order, deferred=step.deferred, rejected=step.rejected,
                    remainders=remainders, chunk_ends=chunk_ends,
                    extra={"cost": snapshot.cost.to_dict(), "inflight_ms": round(snapshot.inflight_ms, 2)},
                )
            )
        return step

    def decode_order(self, snapshot: EngineSnapshot) -> tuple[int, ...]:
        order = tuple(self.strategy.order_running(snapshot))
        if sorted(order) != sorted(snapshot.ids(snapshot.running)):
            raise StrategyError(
                f"strategy {self.strategy.name!r}: order_running must return each running sequence once, "
                f"got {list(order)} for {list(snapshot.ids(snapshot.running))}"
            )
        if self.tracer is not None:
            metadata = {"kind": "decode", "strategy": self.strategy.describe(), "running": len(order)}
            plan = build_decode_plan(snapshot, order, metadata=metadata)
            self.tracer.write(
                trace_record("decode", self.strategy.describe(), plan, snapshot.running, order=order)
            )
        return order

    def held_from_round(self, snapshot: EngineSnapshot) -> frozenset[int]:
        """The strategy's ``hold_from_round``, checked: running sequences only, never all of them."""
        held = frozenset(self.strategy.hold_from_round(snapshot))
        running = set(snapshot.ids(snapshot.running))
        if not held <= running or (running and held == running):
            raise StrategyError(
                f"strategy {self.strategy.name!r}: hold_from_round must return some of the running sequences "
                f"{sorted(running)} and leave at least one, got {sorted(held)}"
            )
        if held and self.tracer is not None:
            self.tracer.write({"step": snapshot.step_id, "kind": "hold", "strategy": self.strategy.describe(),
                               "held": sorted(held), "running": len(running)})
        return held

    def preempt(self, snapshot: EngineSnapshot, candidates: tuple[int, ...]) -> int:
        if not candidates:
            raise ValueError("StepExecutor.preempt: no candidates")
        victim = self.strategy.preempt(snapshot, tuple(candidates))
        if victim not in candidates:
            raise StrategyError(
                f"strategy {self.strategy.name!r}: preempt returned {victim!r}, not one of {list(candidates)}"
            )
        return victim

    def choose_prefill(self, snapshot: EngineSnapshot, engine_choice: bool) -> bool:
        return bool(self.strategy.choose_prefill(snapshot, engine_choice))
