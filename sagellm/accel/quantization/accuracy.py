"""Accuracy metrics of quantized vs float inference, and the thresholds the guard enforces.

Pure functions over token ids and logits; the engine runs live in ``scripts/accuracy_guard.py``
(this package never imports LMDeploy). Three measures:

* **greedy agreement** -- both engines generate freely (greedy, fixed length); the fraction of
  positions where the quantized output equals the float output. One early flip changes
  everything after it, so this is the strictest number.
* **teacher-forced agreement** -- both engines read the same token sequence (prompt + the
  float engine's greedy continuation) in one prefill; the fraction of positions whose argmax
  is the same. Every position is judged on identical history, so one flip does not cascade.
* **perplexity** -- ``exp(mean NLL)`` of held-out corpus text under each engine.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from sagellm.core.validation import check_float


@dataclass(frozen=True)
class Agreement:
    """``matched`` of ``total`` positions agree."""

    matched: int
    total: int

    @property
    def rate(self) -> float:
        return self.matched / self.total if self.total else 1.0


def greedy_agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> Agreement:
    """Position-by-position agreement of free-running outputs; a missing token counts as a mismatch."""
    _check_same_count("greedy_agreement", reference, candidate)
    matched = total = 0
    for ref, cand in zip(reference, candidate):
        total += max(len(ref), len(cand))
        matched += sum(int(a == b) for a, b in zip(ref, cand))
    return Agreement(matched, total)


def first_divergence(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> list[int | None]:
    """Per sequence, the index of the first differing token (None when identical)."""
    _check_same_count("first_divergence", reference, candidate)
    result: list[int | None] = []
    for ref, cand in zip(reference, candidate):
        index = next((i for i, (a, b) in enumerate(zip(ref, cand)) if a != b), None)
        if index is None and len(ref) != len(cand):
            index = min(len(ref), len(cand))
        result.append(index)
    return result


def argmax_agreement(reference_logits: Sequence[torch.Tensor], candidate_logits: Sequence[torch.Tensor]) -> Agreement:
    """Agreement of the argmax of two engines' logits over the same positions (teacher forcing)."""
    _check_same_count("argmax_agreement", reference_logits, candidate_logits)
    matched = total = 0
    for ref, cand in zip(reference_logits, candidate_logits):
        if ref.shape != cand.shape:
            raise ValueError(f"argmax_agreement: logits shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
        matched += int((ref.argmax(dim=-1) == cand.argmax(dim=-1)).sum())
        total += ref.size(0)
    return Agreement(matched, total)


def target_argmax_agreement(logits: Sequence[torch.Tensor], targets: Sequence[Sequence[int]]) -> Agreement:
    """Fraction of positions where ``logits[i][j].argmax() == targets[i][j]``."""
    _check_same_count("target_argmax_agreement", logits, targets)
    matched = total = 0
    for row_logits, row_targets in zip(logits, targets):
        expected = torch.as_tensor(list(row_targets), dtype=torch.long)
        _check_rows("target_argmax_agreement", row_logits, expected)
        matched += int((row_logits.argmax(dim=-1) == expected).sum())
        total += expected.numel()
    return Agreement(matched, total)


def negative_log_likelihood(logits: Sequence[torch.Tensor], targets: Sequence[Sequence[int]]) -> tuple[float, int]:
    """(summed NLL in nats, token count) of ``targets`` under ``logits`` (row ``j`` predicts ``targets[j]``)."""
    _check_same_count("negative_log_likelihood", logits, targets)
    total_nll, count = 0.0, 0
    for row_logits, row_targets in zip(logits, targets):
        expected = torch.as_tensor(list(row_targets), dtype=torch.long)
        _check_rows("negative_log_likelihood", row_logits, expected)
        nll = torch.nn.functional.cross_entropy(row_logits.double(), expected, reduction="sum")
        total_nll += float(nll)
        count += expected.numel()
    return total_nll, count


def perplexity(logits: Sequence[torch.Tensor], targets: Sequence[Sequence[int]]) -> float:
    """``exp(mean NLL)`` over every target token."""
    total_nll, count = negative_log_likelihood(logits, targets)
    if count == 0:
        raise ValueError("perplexity: no target tokens")
    return math.exp(total_nll / count)


@dataclass(frozen=True)
class AgreementMetrics(ABC):
    """A quantized engine vs the float engine on the same prompts and corpus (base of the reports).

    Attributes:
        prompts, new_tokens: workload of the greedy comparison.
        greedy_agreement: free-running position agreement (see the module docstring).
        identical_sequences: prompts whose whole continuation is identical.
        mean_first_divergence: mean index of the first differing token (``new_tokens`` when identical).
        teacher_forced_agreement: argmax agreement on identical histories.
        reference_perplexity, perplexity: float and quantized perplexity on the corpus.
        perplexity_tokens: corpus tokens scored.
    """

    prompts: int
    new_tokens: int
    greedy_agreement: float
    identical_sequences: int
    mean_first_divergence: float
    teacher_forced_agreement: float
    reference_perplexity: float
    perplexity: float
    perplexity_tokens: int

    @property
    @abstractmethod
    def label(self) -> str:
        """The name thresholds and tables use for this comparison."""

    @property
    def perplexity_delta(self) -> float:
        return self.perplexity - self.reference_perplexity

    @property
    def perplexity_rel_delta(self) -> float:
        """``(ppl_quant - ppl_float) / ppl_float``."""
        return self.perplexity_delta / self.reference_perplexity

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "perplexity_delta": self.perplexity_delta,
            "perplexity_rel_delta": self.perplexity_rel_delta,
        }


@dataclass(frozen=True)
class KVAccuracyReport(AgreementMetrics):
    """Quantized-KV engine vs float-KV engine (``kv_dtype`` ``int8`` / ``int4`` / ``fp8_e4m3`` / ``fp8_e5m2``;
    LMDeploy ``quant_policy`` 8 / 4 / 8 / 8, fp8 stored as float8 on the cpu device)."""

    kv_dtype: str = ""
    quant_policy: int = 0

    @property
    def label(self) -> str:
        return self.kv_dtype


@dataclass(frozen=True)
class WeightAccuracyReport(AgreementMetrics):
    """Weight-quantized checkpoint vs the float checkpoint.

    Attributes:
        weight_format: ``sage quantize`` format (``awq-w4``, ``awq-w8``, ``w8``), or ``none`` for a
            control row (the float checkpoint run in ``engine_dtype``).
        engine_dtype: the dtype the engine ran in (LMDeploy runs AWQ checkpoints in float16).
    """

    weight_format: str = ""
    engine_dtype: str = ""

    @property
    def label(self) -> str:
        return self.weight_format if self.weight_format != "none" else f"none@{self.engine_dtype}"


@dataclass(frozen=True)
class AccuracyThresholds:
    """Lower bounds on agreement and an upper bound on relative perplexity increase (None = not checked)."""

    min_greedy_agreement: float | None = None
    min_teacher_forced_agreement: float | None = None
    max_perplexity_rel_delta: float | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("min_greedy_agreement", "min_teacher_forced_agreement", "max_perplexity_rel_delta"):
            value = getattr(self, name)
            if value is not None:
                check_float(owner, name, value, minimum=0.0)

    def violations(self, report: AgreementMetrics) -> list[str]:
        """Human-readable failures of ``report`` against these thresholds (empty when it passes)."""
        failures = []
        if self.min_greedy_agreement is not None and report.greedy_agreement < self.min_greedy_agreement:
            failures.append(
                f"{report.label}: greedy agreement {report.greedy_agreement:.4f} < {self.min_greedy_agreement}"
            )
        if (
            self.min_teacher_forced_agreement is not None
            and report.teacher_forced_agreement < self.min_teacher_forced_agreement
        ):
            failures.append(
                f"{report.label}: teacher-forced agreement {report.teacher_forced_agreement:.4f} "
                f"< {self.min_teacher_forced_agreement}"
            )
        if self.max_perplexity_rel_delta is not None and report.perplexity_rel_delta > self.max_perplexity_rel_delta:
            failures.append(
                f"{report.label}: perplexity +{report.perplexity_rel_delta:.2%} > +{self.max_perplexity_rel_delta:.2%}"
            )
        return failures


def _check_same_count(where: str, a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{where}: got {len(a)} reference and {len(b)} candidate sequences; they must match")


def _check_rows(where: str, logits: torch.Tensor, expected: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.size(0) != expected.numel():
        raise ValueError(
            f"{where}: logits shape {tuple(logits.shape)} does not match {expected.numel()} targets "
            "(expected [targets, vocab])"
        )
