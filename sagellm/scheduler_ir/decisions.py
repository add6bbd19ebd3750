"""What a strategy returns for the waiting queue (pure data; the executor and the engine adapter act on it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sagellm.core.validation import check_int, check_str, invalid

#: Step budget meaning "the engine's own prefill token budget".
ENGINE_BUDGET = 0


@dataclass(frozen=True)
class WaitingDecision:
    """The fate of every waiting sequence this step.

    Attributes:
        order: sequences to try for prefill, in order (the engine stops at its budget or batch limit).
        deferred: sequences held back this step (they stay waiting).
        rejected: sequence -> reason; the request ends now with an error carrying the reason.
        chunk_limits: sequence -> most tokens to prefill this step (absent: all its pending tokens).
            The executor splits on KV-block boundaries, so the chunk may be smaller.
        step_token_budget: most prefill tokens in this step; ``ENGINE_BUDGET`` (0) = the engine's.
        note: a short explanation for traces ("edf", "aged 3 ahead" ...).

    Every waiting sequence must appear in exactly one of order / deferred / rejected.
    """

    order: tuple[int, ...] = ()
    deferred: tuple[int, ...] = ()
    rejected: dict[int, str] = field(default_factory=dict)
    chunk_limits: dict[int, int] = field(default_factory=dict)
    step_token_budget: int = ENGINE_BUDGET
    note: str = ""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "order", tuple(self.order))
        object.__setattr__(self, "deferred", tuple(self.deferred))
        for name in ("order", "deferred"):
            for seq_id in getattr(self, name):
                check_int(owner, name, seq_id, minimum=0)
        if not isinstance(self.rejected, dict):
            raise invalid(owner, "rejected", self.rejected, "a dict seq_id -> reason")
        for seq_id, reason in self.rejected.items():
            check_int(owner, "rejected", seq_id, minimum=0)
            check_str(owner, "rejected", reason)
        if not isinstance(self.chunk_limits, dict):
            raise invalid(owner, "chunk_limits", self.chunk_limits, "a dict seq_id -> tokens")
        for seq_id, tokens in self.chunk_limits.items():
            check_int(owner, "chunk_limits", seq_id, minimum=0)
            check_int(owner, "chunk_limits", tokens, minimum=1)
        check_int(owner, "step_token_budget", self.step_token_budget, minimum=0)
        everyone = list(self.order) + list(self.deferred) + list(self.rejected)
        dupes = sorted({i for i in everyone if everyone.count(i) > 1})
        if dupes:
            raise invalid(owner, "order/deferred/rejected", dupes, "each sequence in exactly one of them")

    def check_covers(self, waiting_ids: tuple[int, ...]) -> None:
        """Raise ValueError unless the decision names exactly the waiting sequences."""
        named = set(self.order) | set(self.deferred) | set(self.rejected)
        missing = sorted(set(waiting_ids) - named)
        extra = sorted(named - set(waiting_ids))
        if missing or extra:
            raise ValueError(
                f"WaitingDecision must name every waiting sequence once: missing {missing}, not waiting {extra}"
            )
