"""``StepCostModel``: learns how long prefill and decode steps take from the steps the engine ran.

Two straight lines, fitted by exponentially weighted least squares (recent steps count more,
so the model follows load and thermal changes)::

    prefill step of n tokens:     ms = a + b * n
    one decode loop of batch B:   ms = c + d * B

Until a line has seen two different sizes it keeps the prior's slope and fits only the
intercept. Slopes and intercepts are clamped at 0.

Decode loops reported with their batch's KV history are also fitted on a plane,
``ms = c + e * B + f * kv_tokens``: on the CPU a 1,500-token history costs a decode loop about as
much as two more 100-token sequences (attention reads all of it), which a line in B cannot tell
from batch size. While the two are not told apart (no history reported, history proportional to
the batch, or a negative slope) the estimate is the line alone. The plane forgets more slowly
(``plane_decay``): within one decode round the batch and its history barely change, so at the
line's decay it saw too little variety to separate the two (in a goodput probe the plane was
unusable in 3 of the 5 plans sampled).

Once a line has some weight, an observation above ``outlier_factor`` times the line's own
prediction counts as that bound: on the CPU device a decode loop timed between two outputs
sometimes spans a prefill step or a burst of HTTP work, and a single 150 ms sample among 6 ms
loops pulled the decode estimate to 11-28 ms per token in a goodput run, so admission control
turned away requests whose TPOT target the engine was meeting at 6-7 ms. A real slow-down
still gets through, at most ``outlier_factor`` times per observation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sagellm.core.validation import check_float, check_int
from sagellm.scheduler_ir.snapshot import CostEstimate


#: ``CostEstimate.decode_floor_ms``: a low percentile of the recent decode loops of the smallest batch
#: among them. The line fit extrapolates badly (its slope swung between 0 and 4 ms per sequence over
#: one goodput run), so the certain-miss test of a TPOT target uses what the engine demonstrably does
#: instead -- at the smallest batch, because a percentile over loops of every batch size is the
#: current batch's speed, not the fastest possible: in a goodput run at 0.5 req/s it read 10.1 ms
#: (5-request batches) while single-request loops took 5-7 ms, and 20 of 59 interactive requests
#: whose 9.92 ms TPOT target fifo met for most were turned away as impossible.
FLOOR_WINDOW = 256
FLOOR_MIN_SAMPLES = 8
FLOOR_PERCENTILE = 0.1
#: ``CostEstimate.prefill_floor_ms_per_token``: the lowest ms per token over this many recent prefill
#: steps. The certain-miss test of a TTFT target uses it, not the line: a line fitted on cold-start
#: steps and 1,500-token documents only (the interactive prompts being rejected on its word, so never
#: observed) put 80 tokens at 170 ms and turned away 59 of 60 interactive requests on an idle engine.
PREFILL_FLOOR_WINDOW = 64


@dataclass
class _Line:
    """Exponentially weighted sums for a least-squares line y = a + b x."""

    prior_a: float
    prior_b: float
    decay: float
    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, x: float, y: float) -> None:
        d = self.decay
        self.n = self.n * d + 1.0
        self.sx = self.sx * d + x
        self.sy = self.sy * d + y
        self.sxx = self.sxx * d + x * x
        self.sxy = self.sxy * d + x * y

    def fit(self) -> tuple[float, float]:
        if self.n == 0:
            return self.prior_a, self.prior_b
        mean_x, mean_y = self.sx / self.n, self.sy / self.n
        var_x = self.sxx / self.n - mean_x * mean_x
        if var_x > 1e-9 * max(1.0, mean_x * mean_x):
            b = max(0.0, (self.sxy / self.n - mean_x * mean_y) / var_x)
        else:
            b = self.prior_b
        a = max(0.0, mean_y - b * mean_x)
        return a, b


#: A plane fit needs its two inputs this far from proportional (1 - squared correlation).
PLANE_MIN_INDEPENDENCE = 0.05


@dataclass
class _Plane:
    """Exponentially weighted sums for a least-squares plane y = a + b x + c z (z in thousands)."""

    decay: float
    n: float = 0.0
    sx: float = 0.0
    sz: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    szz: float = 0.0
    sxz: float = 0.0
    sxy: float = 0.0
    szy: float = 0.0

    def add(self, x: float, z: float, y: float) -> None:
        d, z = self.decay, z / 1000.0
        self.n = self.n * d + 1.0
        self.sx, self.sz, self.sy = self.sx * d + x, self.sz * d + z, self.sy * d + y
        self.sxx, self.szz, self.sxz = self.sxx * d + x * x, self.szz * d + z * z, self.sxz * d + x * z
        self.sxy, self.szy = self.sxy * d + x * y, self.szy * d + z * y

    def fit(self) -> tuple[float, float, float, float] | None:
        """``(a, b, c per z unit, mean z per x)``, or None when x and z cannot be told apart."""
        if self.n == 0:
            return None
        n = self.n
        mx, mz, my = self.sx / n, self.sz / n, self.sy / n
        vxx, vzz, vxz = self.sxx / n - mx * mx, self.szz / n - mz * mz, self.sxz / n - mx * mz
        vxy, vzy = self.sxy / n - mx * my, self.szy / n - mz * my
        det = vxx * vzz - vxz * vxz
        if vxx <= 0 or vzz <= 0 or det < PLANE_MIN_INDEPENDENCE * vxx * vzz:
            return None
        b = (vxy * vzz - vzy * vxz) / det
        c = (vzy * vxx - vxy * vxz) / det
        a = my - b * mx - c * mz
        if b < 0 or c < 0 or a < 0:
            return None
        return a, b, c / 1000.0, 1000.0 * mz / mx


class StepCostModel:
    """Online estimate of step times (see the module docstring).

    Args:
        prior: the estimate before any observation.
        decay: weight kept by past observations per new one, in (0, 1].
        outlier_factor: observations above this multiple of the prediction are clipped to it (>= 1).
        outlier_after: weight a line needs before its predictions clip observations.
        plane_decay: ``decay`` of the decode plane (batch and history).
    """

    def __init__(self, prior: CostEstimate | None = None, decay: float = 0.95, outlier_factor: float = 3.0,
                 outlier_after: float = 8.0, plane_decay: float = 0.995) -> None:
        prior = prior or CostEstimate()
        for name, value in (("decay", decay), ("plane_decay", plane_decay)):
            check_float("StepCostModel", name, value, positive=True)
            if value > 1:
                raise ValueError(f"StepCostModel.{name}: got {value!r}; accepted: a number in (0, 1]")
        check_float("StepCostModel", "outlier_factor", outlier_factor, minimum=1.0)
        check_float("StepCostModel", "outlier_after", outlier_after, minimum=0.0)
        self._outlier_factor = outlier_factor
        self._outlier_after = outlier_after
        self._prefill = _Line(prior.prefill_fixed_ms, prior.prefill_ms_per_token, decay)
        self._decode = _Line(prior.decode_fixed_ms, prior.decode_ms_per_seq, decay)
        self._decode_plane = _Plane(plane_decay)
        self._recent_decodes: deque[tuple[int, float]] = deque(maxlen=FLOOR_WINDOW)
        self._recent_prefill_rates: deque[float] = deque(maxlen=PREFILL_FLOOR_WINDOW)
        # the estimate is read several times per engine step and changes only with an observation
        self._estimate: CostEstimate | None = None

    def _add(self, line: _Line, x: float, y: float) -> float:
        """Add (x, y) to ``line``, y clipped to the outlier bound; returns the y added."""
        if line.n >= self._outlier_after:
            a, b = line.fit()
            bound = self._outlier_factor * (a + b * x)
            if bound > 0:
                y = min(y, bound)
        line.add(x, y)
        return y

    def observe_prefill(self, tokens: int, ms: float) -> None:
        """A prefill step of ``tokens`` tokens took ``ms`` milliseconds."""
        check_int("StepCostModel.observe_prefill", "tokens", tokens, minimum=1)
        check_float("StepCostModel.observe_prefill", "ms", ms, minimum=0.0)
        self._add(self._prefill, float(tokens), float(ms))
        self._recent_prefill_rates.append(float(ms) / tokens)
        self._estimate = None

    def observe_decode(self, batch: int, ms: float, kv_tokens: int | None = None) -> None:
        """One decode loop of ``batch`` sequences (``kv_tokens`` history tokens in all, if known) took ``ms``."""
        check_int("StepCostModel.observe_decode", "batch", batch, minimum=1)
        check_float("StepCostModel.observe_decode", "ms", ms, minimum=0.0)
        if kv_tokens is not None:
            check_int("StepCostModel.observe_decode", "kv_tokens", kv_tokens, minimum=0)
        added = self._add(self._decode, float(batch), float(ms))
        if kv_tokens is not None:
            self._decode_plane.add(float(batch), float(kv_tokens), added)
        self._recent_decodes.append((batch, float(ms)))
        self._estimate = None

    def estimate(self) -> CostEstimate:
        if self._estimate is None:
            self._estimate = self._fit()
        return self._estimate

    def _fit(self) -> CostEstimate:
        pa, pb = self._prefill.fit()
        da, db = self._decode.fit()
        per_kv = mean_kv = 0.0
        plane = self._decode_plane.fit()
        if plane is not None:
            # the line becomes the plane at the mean history per sequence it was fitted on
            da, per_seq, per_kv, mean_kv = plane
            db = per_seq + per_kv * mean_kv
        return CostEstimate(prefill_fixed_ms=pa, prefill_ms_per_token=pb, decode_fixed_ms=da, decode_ms_per_seq=db,
                            decode_floor_ms=self._decode_floor(),
                            prefill_floor_ms_per_token=min(self._recent_prefill_rates, default=0.0),
                            decode_ms_per_kv_token=per_kv, decode_mean_kv_per_seq=mean_kv)

    def _decode_floor(self) -> float:
        """The FLOOR_PERCENTILE of the smallest-batch loops among the last FLOOR_WINDOW decode loops.

        Loops are taken smallest batch first until FLOOR_MIN_SAMPLES are in (0 before that many
        loops were seen at all).
        """
        if len(self._recent_decodes) < FLOOR_MIN_SAMPLES:
            return 0.0
        by_batch = sorted(self._recent_decodes)
        smallest = [ms for batch, ms in by_batch if batch <= by_batch[FLOOR_MIN_SAMPLES - 1][0]]
        smallest.sort()
        return smallest[int(FLOOR_PERCENTILE * (len(smallest) - 1))]
