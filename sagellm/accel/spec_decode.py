"""Speculative decoding: the settings a deployment asks for and the acceptance statistics it reports.

A small *draft* model proposes ``num_speculative_tokens`` tokens per step; the target model
scores all of them in one forward pass and keeps the longest prefix it agrees with, plus one token
of its own. With greedy verification the output is token-identical to plain greedy decoding of
the target; the gain is fewer target passes per generated token::

    tokens per target pass = 1 + accepted drafts        acceptance rate = accepted / proposed

The engine side (LMDeploy's ``spec_decode`` package plus sagellm's ``draft_model`` proposer) lives
in ``sagellm.engines.lmdeploy.spec_decode``; this module is pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sagellm.core.validation import check_choice, check_int

#: Proposal methods: ``draft_model`` (sagellm: any small causal LM sharing the target's vocabulary)
#: and LMDeploy 0.11's own (trained heads that read the target's hidden states).
SPEC_METHODS: tuple[str, ...] = ("draft_model", "eagle", "eagle3", "deepseek_mtp")
MAX_SPECULATIVE_TOKENS = 16
#: Tokens one decode round should produce per sequence at full acceptance (LMDeploy's non-speculative
#: round: ``prefill_interval`` = 16 loops of one token).
ROUND_TOKENS = 16


@dataclass(frozen=True)
class SpecDecodeProfile:
    """Requested speculative decoding.

    Attributes:
        method: one of :data:`SPEC_METHODS`.
        draft_model: path of the draft checkpoint (required for ``draft_model``).
        num_speculative_tokens: draft tokens proposed per step (1 .. 16).
    """

    method: str = "draft_model"
    draft_model: str | None = None
    num_speculative_tokens: int = 3

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "method", self.method, SPEC_METHODS)
        check_int(owner, "num_speculative_tokens", self.num_speculative_tokens, minimum=1)
        if self.num_speculative_tokens > MAX_SPECULATIVE_TOKENS:
            raise ValueError(
                f"{owner}.num_speculative_tokens: got {self.num_speculative_tokens}; "
                f"accepted: 1 .. {MAX_SPECULATIVE_TOKENS}"
            )
        if self.method == "draft_model" and not self.draft_model:
            raise ValueError(f"{owner}.draft_model: method 'draft_model' needs the path of a draft checkpoint")


def decode_round_loops(num_speculative_tokens: int, synchronous_device: bool, default_loops: int = ROUND_TOKENS) -> int:
    """Decode loops per scheduling round (LMDeploy's ``prefill_interval``) under speculative decoding.

    LMDeploy runs every loop of a round even after all its sequences have stopped, and admits new
    requests only between rounds. A speculative loop is a draft pass per proposed token plus a target
    pass; where passes run synchronously (the cpu device) each costs its full compute, so the default
    16-loop round spends up to 15 loops on finished sequences and holds the next prefill back as long
    (measured on CPU with k=4: TTFT of back-to-back requests 1.2-1.3 s against 0.2 s without a draft).
    There the round is cut to produce about :data:`ROUND_TOKENS` tokens at full acceptance; asynchronous
    devices keep ``default_loops``.
    """
    if not synchronous_device:
        return default_loops
    return max(2, math.ceil(ROUND_TOKENS / (num_speculative_tokens + 1)))


def check_draft_compatible(target_config: Mapping, draft_config: Mapping) -> None:
    """Raise ``ValueError`` when a draft cannot propose tokens for a target (Hugging Face ``config.json`` dicts).

    Draft token ids are fed to the target as they are, so the vocabularies must be the same size
    and the special tokens the same ids.
    """
    problems = []
    for key in ("vocab_size", "bos_token_id", "eos_token_id"):
        if target_config.get(key) != draft_config.get(key):
            problems.append(f"{key}: target {target_config.get(key)!r}, draft {draft_config.get(key)!r}")
    if problems:
        raise ValueError("the draft model does not share the target's vocabulary: " + "; ".join(problems))


@dataclass
class AcceptanceStats:
    """Draft acceptance over verification steps (one step = one sequence verified once).

    Attributes:
        num_speculative_tokens: drafts proposed per step.
        steps: verification steps recorded.
        accepted: drafts the target kept, summed.
        accepted_at: ``accepted_at[i]`` = steps that kept at least ``i + 1`` drafts.
    """

    num_speculative_tokens: int
    steps: int = 0
    accepted: int = 0
    accepted_at: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "num_speculative_tokens", self.num_speculative_tokens, minimum=1)
        if not self.accepted_at:
            self.accepted_at = [0] * self.num_speculative_tokens

    def record(self, accepted_per_sequence: Iterable[int]) -> None:
        """Add one verification step of each sequence; each value is that sequence's kept drafts."""
        for kept in accepted_per_sequence:
            kept = int(kept)
            if not 0 <= kept <= self.num_speculative_tokens:
                raise ValueError(
                    f"AcceptanceStats.record: {kept} accepted of {self.num_speculative_tokens} proposed"
                )
            self.steps += 1
            self.accepted += kept
            for i in range(kept):
                self.accepted_at[i] += 1

    @property
    def proposed(self) -> int:
        return self.steps * self.num_speculative_tokens

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / proposed drafts (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens each verification step emitted: the kept drafts plus the target's own token."""
        return 1.0 + self.accepted / self.steps if self.steps else 0.0

    def reset(self) -> None:
        self.steps = self.accepted = 0
        self.accepted_at = [0] * self.num_speculative_tokens

    def to_dict(self) -> dict:
        return {
            "num_speculative_tokens": self.num_speculative_tokens,
            "steps": self.steps,
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_step": self.tokens_per_step,
            "acceptance_by_position": [n / self.steps if self.steps else 0.0 for n in self.accepted_at],
        }
