"""sagellm.telemetry: sagellm's Prometheus series, the recording API and the ``/metrics`` plumbing.

Importing it creates no metric and touches no environment; see README.md.
"""

from sagellm.telemetry.metrics import (
    KV_BLOCK_STATES,
    SCHEDULER_EVENTS,
    SLO_KINDS,
    TIERS,
    TRANSFER_DIRECTIONS,
    GatewayMetrics,
    SageMetrics,
    metrics,
)
from sagellm.telemetry.series import ALL_SERIES, ENGINE_SERIES, GATEWAY_SERIES, SeriesSpec, series_by_name

__all__ = [
    "ALL_SERIES",
    "ENGINE_SERIES",
    "GATEWAY_SERIES",
    "KV_BLOCK_STATES",
    "SCHEDULER_EVENTS",
    "SLO_KINDS",
    "TIERS",
    "TRANSFER_DIRECTIONS",
    "GatewayMetrics",
    "SageMetrics",
    "SeriesSpec",
    "metrics",
    "series_by_name",
]
