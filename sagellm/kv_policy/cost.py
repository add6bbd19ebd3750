"""``CostModel``: what a KV block costs to recompute versus to move.

Recomputing a block means running prefill over its tokens with everything before it
as context. Per token the dense part (projections, MLP) costs a constant; attention
grows with the context, so a block deep in a long prefix is dearer than the same
block near the start::

    block of n tokens whose first token sits at position d (d = depth):

    recompute_us(d, n) = n * prefill_us_per_token
                       + attention_us_per_token_pair * sum_{p=d+1}^{d+n} p
                       = n * prefill_us_per_token
                       + attention_us_per_token_pair * (n*d + n*(n+1)/2)

Moving a block from a tier into device memory costs ``latency_us + bytes / bandwidth``
(``TierCost``); a block already on ``DEVICE`` costs nothing.

``CostModel.from_flops`` derives both prefill coefficients from a model size and a
measured (or nominal) FLOP/s: ``2 * params`` FLOPs per token for the dense part and
``4 * num_layers * hidden_size`` FLOPs per (query, key) pair for QK^T and AV.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sagellm.core.kv import KVTier
from sagellm.core.validation import check_float, check_int, coerce_enum, invalid

_US = 1e6


@dataclass(frozen=True)
class TierCost:
    """Cost of reading one block from a tier into device memory.

    Attributes:
        bandwidth_bytes_per_s: sustained read bandwidth into the device (> 0).
        latency_us: fixed cost per block (request setup, syscall, DMA launch).
    """

    bandwidth_bytes_per_s: float
    latency_us: float = 0.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_float(owner, "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s, positive=True)
        check_float(owner, "latency_us", self.latency_us, minimum=0.0)

    def transfer_us(self, size_bytes: int) -> float:
        return self.latency_us + size_bytes / self.bandwidth_bytes_per_s * _US


@dataclass(frozen=True)
class CostModel:
    """Recompute and transfer costs, in microseconds.

    Attributes:
        prefill_us_per_token: dense prefill time per token (independent of context).
        attention_us_per_token_pair: attention time per (query token, context token) pair.
        tiers: load cost per non-device tier; asking about a tier not listed raises.
    """

    prefill_us_per_token: float
    attention_us_per_token_pair: float = 0.0
    tiers: Mapping[KVTier, TierCost] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_float(owner, "prefill_us_per_token", self.prefill_us_per_token, minimum=0.0)
        check_float(owner, "attention_us_per_token_pair", self.attention_us_per_token_pair, minimum=0.0)
        if not isinstance(self.tiers, Mapping):
            raise invalid(owner, "tiers", self.tiers, "a mapping of tier -> TierCost")
        tiers: dict[KVTier, TierCost] = {}
        for key, cost in self.tiers.items():
            tier = coerce_enum(owner, "tiers", key, KVTier)
            if tier is KVTier.DEVICE:
                raise invalid(owner, "tiers", key, "non-device tiers (device blocks cost nothing to use)")
            if not isinstance(cost, TierCost):
                raise invalid(owner, f"tiers[{tier}]", cost, "a TierCost")
            tiers[tier] = cost
        object.__setattr__(self, "tiers", MappingProxyType(tiers))

    @classmethod
    def from_flops(
        cls,
        flops_per_s: float,
        num_params: int,
        num_layers: int,
        hidden_size: int,
        tiers: Mapping[KVTier, TierCost],
        efficiency: float = 1.0,
    ) -> CostModel:
        """Prefill coefficients from a model size and the device's FLOP/s.

        Args:
            flops_per_s: peak (or measured) FLOP/s of the device.
            num_params: model parameters (dense part: 2 FLOPs per parameter per token).
            num_layers / hidden_size: attention cost, 4 * layers * hidden FLOPs per pair.
            tiers: load cost of each non-device tier.
            efficiency: achieved fraction of ``flops_per_s`` (MFU) in (0, 1].
        """
        check_float("CostModel.from_flops", "flops_per_s", flops_per_s, positive=True)
        check_int("CostModel.from_flops", "num_params", num_params, minimum=1)
        check_int("CostModel.from_flops", "num_layers", num_layers, minimum=1)
        check_int("CostModel.from_flops", "hidden_size", hidden_size, minimum=1)
        check_float("CostModel.from_flops", "efficiency", efficiency, positive=True)
        if efficiency > 1:
            raise invalid("CostModel.from_flops", "efficiency", efficiency, "a number in (0, 1]")
        rate = flops_per_s * efficiency
        return cls(
            prefill_us_per_token=2.0 * num_params / rate * _US,
            attention_us_per_token_pair=4.0 * num_layers * hidden_size / rate * _US,
            tiers=tiers,
        )

    def recompute_us(self, depth: int, num_tokens: int) -> float:
        """Prefill time of ``num_tokens`` tokens that follow ``depth`` tokens of context."""
        pairs = num_tokens * depth + num_tokens * (num_tokens + 1) / 2
        return num_tokens * self.prefill_us_per_token + pairs * self.attention_us_per_token_pair

    def transfer_us(self, tier: KVTier, size_bytes: int) -> float:
        """Time to bring ``size_bytes`` from ``tier`` into device memory (0 for ``DEVICE``).

        Raises:
            ValueError: ``tier`` has no ``TierCost``.
        """
        tier = coerce_enum("CostModel", "tier", tier, KVTier)
        if tier is KVTier.DEVICE:
            return 0.0
        try:
            return self.tiers[tier].transfer_us(size_bytes)
        except KeyError:
            raise invalid(
                "CostModel", "tier", tier.value, "one of the tiers with a cost: " + ", ".join(map(str, self.tiers))
            ) from None
