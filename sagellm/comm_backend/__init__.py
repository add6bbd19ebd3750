"""sagellm.comm_backend: KV transport configuration, presets, the topology probe and the
``TransportEngine`` (transfer buffers served to peers over shm / tcp / torch_dist / Mooncake / DLSlime).

Importing it imports neither torch nor any vendor module (the probe and the shm/torch_dist
backends import torch when they run). See README.md for the contract.
"""

from sagellm.comm_backend.buffer import StoredObject, TransferBuffer
from sagellm.comm_backend.checksum import ChecksumMismatch, TransferError
from sagellm.comm_backend.engine import TRANSPORTS, PeerLink, TransferStats, TransportEngine, TransportServer, backend_status
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
    "TRANSPORTS",
    "ChecksumMismatch",
    "PeerLink",
    "StoredObject",
    "TransferBuffer",
    "TransferError",
    "TransferStats",
    "TransportEngine",
    "TransportServer",
    "backend_status",
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
