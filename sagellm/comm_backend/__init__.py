"""sagellm.comm_backend: KV transport configuration, presets and the topology probe.

Importing it imports neither torch nor any vendor module (the probe imports torch when it
measures). See README.md for the contract.
"""

from sagellm.comm_backend.topology import (
    LINK_KINDS,
    DeviceEntry,
    HardwareProfile,
    LinkEntry,
    MemcpyResult,
    NumaNode,
    ToolRun,
    probe,
    recommend_preset,
)
from sagellm.comm_backend.transport_config import (
    COMPRESSIONS,
    TARGET_DTYPES,
    TRANSPORT_BACKENDS,
    KVTransportConfig,
    TransportPreset,
    from_environment,
    get_preset,
    load_presets,
    parse_kv_transport,
    parse_size,
)

__all__ = [
    "COMPRESSIONS",
    "LINK_KINDS",
    "TARGET_DTYPES",
    "TRANSPORT_BACKENDS",
    "DeviceEntry",
    "HardwareProfile",
    "KVTransportConfig",
    "LinkEntry",
    "MemcpyResult",
    "NumaNode",
    "ToolRun",
    "TransportPreset",
    "from_environment",
    "get_preset",
    "load_presets",
    "parse_kv_transport",
    "parse_size",
    "probe",
    "recommend_preset",
]
