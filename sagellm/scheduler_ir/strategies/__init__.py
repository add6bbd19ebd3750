"""Scheduling strategies and their registry (``SAGELLM_SCHEDULER`` names an entry)."""

from __future__ import annotations

from sagellm.core.registry import Registry
from sagellm.scheduler_ir.config import StrategyOptions
from sagellm.scheduler_ir.strategies.base import SchedulingStrategy

STRATEGIES: Registry[type[SchedulingStrategy]] = Registry("scheduling strategy")
STRATEGIES.register("fifo", "sagellm.scheduler_ir.strategies.fifo:FifoStrategy")
STRATEGIES.register("priority", "sagellm.scheduler_ir.strategies.priority:PriorityStrategy")
STRATEGIES.register("slo_aware", "sagellm.scheduler_ir.strategies.slo_aware:SloAwareStrategy")
STRATEGIES.register("fair", "sagellm.scheduler_ir.strategies.fair:FairShareStrategy")
STRATEGIES.register("adaptive", "sagellm.scheduler_ir.strategies.adaptive:AdaptiveStrategy")


def build_strategy(name: str, options: StrategyOptions | None = None) -> SchedulingStrategy:
    """A new strategy instance; unknown names raise listing the valid ones."""
    return STRATEGIES.get(name)(options)


__all__ = ["STRATEGIES", "SchedulingStrategy", "build_strategy"]
