"""Which row counts a model's dense linears run packed: measured once, over all of its weights.

:class:`~sagellm.accel.kernels.cpu.linear.PackedLinear` is faster than ``F.linear`` on some CPUs
and models and slower on others, and the difference comes from where the weights are read from
(cache or memory), so one hot weight misleads. Measured on the 2-core Intel host of 2026-11-25:

* tiny model (16 decoder linears and the LM head, 15 MiB): F.linear took 0.81-0.97x the packed path's time at 8-128 rows
  on one thread; served chat with the packed path on from 4 rows up gave 0.93x / 0.97x the output
  throughput of F.linear everywhere at concurrency 8 / 32
  (``benchmarks/results/report-20261125T045458Z.md``, 3 repetitions interleaved);
* 100M model (48 decoder linears and the LM head, 367 MiB): the packed path took 0.66 / 0.60 / 0.72 / 0.85x F.linear's time
  at 4 / 8 / 16 / 32 rows on two threads.

So a :class:`LinearCalibration` collects the packed layers that run before any choice is made
(a model's first forward reaches its decoder's linears, in forward order) and, when asked, times
one pass over all of their weights each way at every size of :func:`measured_rows`, with the
threads a forward of that many tokens gets, alternating the two and keeping each one's best. One
choice per row count serves every layer of the model: timed one by one, inside such passes, the
tiny model's layers chose the packed path for 4 of 16 at 16-64 rows, and served chat measured that
mix 0.93x / 0.99x F.linear everywhere at concurrency 8 / 32 (same report). The whole-model choice
picks F.linear at every size for the tiny model (0.97x / 1.01x F.linear everywhere, noise) and the
packed path at every size for the 100M one (``report-20261125T050607Z.md``). The packed
path keeps a size only where its pass took at most :data:`PACKED_WIN_RATIO` of F.linear's: its
second copy of the weights must pay for itself. A pass reads at most :data:`MEASURE_MAX_BYTES` of
weights (the first layers in forward order; more than any cache, so a larger model measures the
same regime).
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu.linear import PackedLinear

logger = logging.getLogger(__name__)

#: row counts timed above ``min_rows``: decode batch sizes, then one prefill size for every larger count
MEASURED_ROWS = (4, 8, 16, 32, 64, 256)

#: the packed path keeps a row count only where it took at most this share of F.linear's time
PACKED_WIN_RATIO = 0.95

#: weights one timed pass reads at most
MEASURE_MAX_BYTES = 512 << 20

#: timed passes each way per row count (after one untimed pass that packs and builds)
MEASURE_REPETITIONS = 2


def measured_rows(min_rows: int) -> tuple[int, ...]:
    """The row counts a calibration times for layers that pack from ``min_rows`` rows up."""
    first = max(1, min_rows)
    return tuple(sorted({first, *(rows for rows in MEASURED_ROWS if rows > first)}))


@dataclass(frozen=True)
class RowChoice:
    """Per measured row count, whether the packed path runs it; a count takes the choice of the
    largest measured count at or below it (counts below the first take F.linear)."""

    rows: tuple[int, ...]
    packed: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.packed) or list(self.rows) != sorted(set(self.rows)):
            raise ValueError(f"rows must be strictly increasing with one choice each, got {self.rows!r} / {self.packed!r}")

    @functools.cached_property
    def packs_any(self) -> bool:
        return any(self.packed)

    def packs(self, rows: int) -> bool:
        index = bisect.bisect_right(self.rows, rows) - 1
        return index >= 0 and self.packed[index]


@dataclass(frozen=True)
class RowTiming:
    """One row count's best pass over the measured weights, each way."""

    rows: int
    threads: int
    plain_s: float
    packed_s: float

    @property
    def packed_wins(self) -> bool:
        return self.packed_s <= PACKED_WIN_RATIO * self.plain_s


@dataclass(frozen=True)
class LinearMeasurement:
    """What a calibration measured: per row count, the best pass over the measured layers each way."""

    layers: int
    measured_layers: int
    measured_bytes: int
    timings: tuple[RowTiming, ...]

    @property
    def choice(self) -> RowChoice:
        return RowChoice(tuple(t.rows for t in self.timings), tuple(t.packed_wins for t in self.timings))

    def summary(self) -> str:
        sizes = ", ".join(f"{t.rows} rows x {t.threads} thr: {t.plain_s * 1e3:.2f} / {t.packed_s * 1e3:.2f} ms"
                          f" -> {'packed' if t.packed_wins else 'F.linear'}" for t in self.timings)
        return (f"{self.measured_layers} of {self.layers} linears ({self.measured_bytes / (1 << 20):.0f} MiB), "
                f"F.linear / packed per pass: {sizes}")


Layer = tuple[PackedLinear, torch.Tensor, "torch.Tensor | None"]


def measure_linears(layers: Sequence[Layer], rows: Sequence[int], threads_for: Callable[[int], int], *,
                    repetitions: int = MEASURE_REPETITIONS, max_bytes: int = MEASURE_MAX_BYTES,
                    clock: Callable[[], float] = time.perf_counter) -> LinearMeasurement:
    """Time a pass over ``layers`` (the first ones, at most ``max_bytes`` of weights, at least one)
    through ``F.linear`` and through the layers' packed path, alternating, at each count of ``rows``
    on ``threads_for(rows)`` threads; restores the caller's thread count."""
    if not layers:
        raise ValueError("measure_linears needs at least one layer")
    measured: list[Layer] = []
    total = 0
    for layer in layers:
        size = layer[1].numel() * layer[1].element_size()
        if measured and total + size > max_bytes:
            break
        measured.append(layer)
        total += size
    timings = []
    threads_before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for count in rows:
                threads = threads_for(count)
                torch.set_num_threads(threads)
                # constant inputs: timing does not depend on the values, and the RNG stays untouched
                inputs = {(w.shape[1], w.dtype): torch.full((count, w.shape[1]), 0.01, dtype=w.dtype)
                          for _, w, _ in measured}
                best = {"plain": math.inf, "packed": math.inf}
                for repetition in range(repetitions + 1):
                    for path in best:
                        start = clock()
                        for layer, weight, bias in measured:
                            x = inputs[weight.shape[1], weight.dtype]
                            if path == "plain":
                                F.linear(x, weight, bias)
                            else:
                                layer.packed_linear(x, weight, bias)
                        if repetition:  # the first pass packs the weights and builds oneDNN's matmuls
                            best[path] = min(best[path], clock() - start)
                timings.append(RowTiming(count, threads, best["plain"], best["packed"]))
    finally:
        torch.set_num_threads(threads_before)
    return LinearMeasurement(len(layers), len(measured), total, tuple(timings))


class LinearCalibration:
    """Collects the packed layers that run without a choice, then chooses for them together.

    A layer reports itself on every undecided call (:meth:`saw`, from ``PackedLinear``); the owner
    calls :meth:`decide` between forwards with a key naming the model, so a model's first forward
    is measured whole. Layers of a model that first run later (an LM head, which a warmup forward
    does not reach) take the choice already made for that model and ``min_rows``.
    """

    def __init__(self) -> None:
        self._pending: dict[int, Layer] = {}
        self._choices: dict[tuple[Hashable, int], RowChoice] = {}
        self.last: LinearMeasurement | None = None

    def saw(self, layer: PackedLinear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        if id(layer) not in self._pending:
            self._pending[id(layer)] = (layer, weight, bias)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def decide(self, threads_for: Callable[[int], int], key: Hashable = None,
               **measure_options) -> LinearMeasurement | None:
        """Hand every collected layer its model's choice, measuring the layers of a (``key``,
        ``min_rows``) not chosen for yet; returns the last new measurement (None: none made)."""
        if not self._pending:
            return None
        layers, self._pending = list(self._pending.values()), {}
        groups: dict[int, list[Layer]] = {}
        for layer in layers:
            groups.setdefault(layer[0].min_rows, []).append(layer)
        measurement = None
        for min_rows, group in groups.items():
            choice = self._choices.get((key, min_rows))
            if choice is None:
                started = time.perf_counter()
                measurement = measure_linears(group, measured_rows(min_rows), threads_for, **measure_options)
                choice = self._choices[key, min_rows] = measurement.choice
                logger.info("packed linear choice in %.2f s: %s", time.perf_counter() - started, measurement.summary())
                self.last = measurement
            for layer, _, _ in group:
                layer.choose(choice)
        return measurement
