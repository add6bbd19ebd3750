"""Percentiles and the per-scenario summary of request records (pure; standard library only)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["PERCENTILES", "percentile", "distribution", "median", "ratio"]

#: The percentiles every latency metric is reported at.
PERCENTILES: tuple[int, ...] = (50, 95, 99)


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation between closest ranks (numpy's default); None if empty."""
    if not 0 <= q <= 1:
        raise ValueError(f"percentile: q must be in [0, 1], got {q}")
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Iterable[float | None]) -> float | None:
    return percentile(values, 0.5)


def distribution(name: str, values: Sequence[float | None]) -> dict[str, float | None]:
    """``{name_p50: .., name_p95: .., name_p99: .., name_mean: ..}`` of ``values`` (None when empty)."""
    data = [v for v in values if v is not None]
    out: dict[str, float | None] = {f"{name}_p{p}": percentile(data, p / 100) for p in PERCENTILES}
    out[f"{name}_mean"] = sum(data) / len(data) if data else None
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def merge_counts(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """Key-wise sum of two count maps."""
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out
