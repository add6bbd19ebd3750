"""The strategy interface: pure decisions over an ``EngineSnapshot``.

A strategy never touches the engine. It answers five questions the seam asks each step:

- ``plan_waiting``: which waiting requests to try for prefill, in which order, which to hold
  back or reject, and how much of a long prompt to prefill this step;
- ``order_running``: the order in which running requests get KV blocks for their next tokens;
- ``preempt``: which running request gives up its blocks when there are not enough;
- ``choose_prefill``: whether the next step prefills or decodes (given the engine's own choice);
- ``cut_round``: whether a decode round ends before its last loop;
- ``hold_from_round``: which running requests sit out the decode round being scheduled.

The defaults reproduce LMDeploy 0.11: engine order everywhere, the newest candidate is preempted,
the engine's prefill/decode choice stands. Two exceptions, both applied by the seam to every
strategy:

- a decode round ends early when every sequence in it finished or a waiting request could join
  (``rounds.round_cut``; off with ``sched_round_cut``);
- where prefill compute outweighs a step's fixed cost, a prefill step may take fewer of the
  requests in the strategy's order than fit (``prefill_steps.prefill_batch_size``; off with
  ``sched_prefill_split``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from sagellm.scheduler_ir.config import StrategyOptions
from sagellm.scheduler_ir.decisions import WaitingDecision
from sagellm.scheduler_ir.rounds import RoundCut, RoundProgress, round_cut
from sagellm.scheduler_ir.snapshot import EngineSnapshot


class SchedulingStrategy(ABC):
    """Base of every strategy (see the module docstring).

    Attributes:
        name: the registry name.
        stock: True when every decision equals LMDeploy's own (the seam may skip consulting it).
        decode_loops: decode steps per scheduling round the strategy wants (LMDeploy's
            ``prefill_interval``; requests are admitted only between rounds); None: LMDeploy's 16.
    """

    name: ClassVar[str] = ""
    stock: ClassVar[bool] = False
    decode_loops: ClassVar[int | None] = None

    def __init__(self, options: StrategyOptions | None = None) -> None:
        self.options = options or StrategyOptions()

    @abstractmethod
    def plan_waiting(self, snapshot: EngineSnapshot) -> WaitingDecision:
        """Decide the fate of every waiting sequence (see ``WaitingDecision``)."""

    def order_running(self, snapshot: EngineSnapshot) -> tuple[int, ...]:
        """Running sequence ids, most deserving of blocks first (default: engine order)."""
        return snapshot.ids(snapshot.running)

    def preempt(self, snapshot: EngineSnapshot, candidates: tuple[int, ...]) -> int:
        """The candidate to preempt; ``candidates`` is in ``order_running`` order (default: the last)."""
        return candidates[-1]

    def choose_prefill(self, snapshot: EngineSnapshot, engine_choice: bool) -> bool:
        """Whether the next step prefills (default: the engine's choice)."""
        return engine_choice

    def hold_from_round(self, snapshot: EngineSnapshot) -> frozenset[int]:
        """Running sequences that sit out the next decode round, keeping their blocks (default: none)."""
        return frozenset()

    def cut_round(self, progress: RoundProgress) -> RoundCut | None:
        """Why the decode round should end after the loops done so far, or None (see ``rounds``)."""
        return round_cut(progress)

    def describe(self) -> str:
        return self.name
