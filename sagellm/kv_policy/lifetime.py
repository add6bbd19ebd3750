"""Lifetime prediction: how soon will a block be reused?

A ``LifetimePredictor`` is fed access events (the radix index calls ``observe`` on every
hit and insert when wired with ``RadixIndex(on_access=predictor.observe)``) and answers
``reuse_rate``: expected reuses per second of a candidate block. ``cost_aware`` weighs a
block's cost of being lost by this rate.

``EWMAReusePredictor`` keeps, per block, an exponentially weighted moving average of the
interval between accesses::

    interval_k = t_k - t_{k-1}
    ewma      <- interval_k                              (first interval)
    ewma      <- alpha * interval_k + (1 - alpha) * ewma (later ones)

    reuse_rate(now) = 1 / max(ewma, now - last_access)

so a block that is overdue (not seen for longer than its usual interval) decays. A block
with no interval yet is estimated from the snapshot alone:
``ewma ~ prior_interval_s / (1 + hit_count)``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol, runtime_checkable

from sagellm.core.validation import check_float, check_int, invalid
from sagellm.kv_policy.types import BlockCandidate

_MIN_INTERVAL_S = 1e-6


@runtime_checkable
class LifetimePredictor(Protocol):
    """Access history in, reuse rate out."""

    def observe(self, block_hash: bytes, when: float) -> None:
        """Record an access (hit or insert) of ``block_hash`` at time ``when``."""
        ...

    def forget(self, block_hash: bytes) -> None:
        """Drop the history of a block that left every tier."""
        ...

    def reuse_rate(self, candidate: BlockCandidate, now: float) -> float:
        """Expected reuses per second of ``candidate`` from ``now`` on (>= 0)."""
        ...


class EWMAReusePredictor:
    """EWMA of reuse intervals per block (thread-safe, bounded memory).

    Args:
        alpha: weight of the newest interval, in (0, 1].
        prior_interval_s: interval assumed for a block never reused, before hits are counted.
        max_tracked: blocks remembered; the least recently observed are forgotten first.
    """

    def __init__(self, alpha: float = 0.5, prior_interval_s: float = 60.0, max_tracked: int = 1_000_000) -> None:
        owner = type(self).__name__
        check_float(owner, "alpha", alpha, positive=True)
        if alpha > 1:
            raise invalid(owner, "alpha", alpha, "a number in (0, 1]")
        check_float(owner, "prior_interval_s", prior_interval_s, positive=True)
        check_int(owner, "max_tracked", max_tracked, minimum=1)
        self.alpha = float(alpha)
        self.prior_interval_s = float(prior_interval_s)
        self.max_tracked = max_tracked
        # block hash -> [last access, ewma interval or None]
        self._state: OrderedDict[bytes, list] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._state)

    def observe(self, block_hash: bytes, when: float) -> None:
        with self._lock:
            state = self._state.get(block_hash)
            if state is None:
                self._state[block_hash] = [when, None]
                if len(self._state) > self.max_tracked:
                    self._state.popitem(last=False)
                return
            self._state.move_to_end(block_hash)
            last, ewma = state
            if when <= last:
                return
            interval = when - last
            state[0] = when
            state[1] = interval if ewma is None else self.alpha * interval + (1 - self.alpha) * ewma

    def forget(self, block_hash: bytes) -> None:
        with self._lock:
            self._state.pop(block_hash, None)

    def interval(self, block_hash: bytes) -> float | None:
        """The current EWMA interval of ``block_hash``, None before its second access."""
        with self._lock:
            state = self._state.get(block_hash)
            return None if state is None else state[1]

    def reuse_rate(self, candidate: BlockCandidate, now: float) -> float:
        with self._lock:
            state = self._state.get(candidate.block_hash)
            last_seen, ewma = (None, None) if state is None else state
        last = candidate.last_access if last_seen is None else max(last_seen, candidate.last_access)
        if ewma is None:
            ewma = self.prior_interval_s / (1 + candidate.hit_count)
        return 1.0 / max(ewma, now - last, _MIN_INTERVAL_S)
