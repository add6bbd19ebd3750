"""sagellm.core: shared types, protocols, config loading and registries.

Imports only the standard library and pyyaml; importing it has no side effects.
See README.md in this folder for the contract.
"""

from sagellm.core.capability import DEVICE_KINDS, INTERCONNECTS, KNOWN_FEATURES, CapabilityDescriptor
from sagellm.core.comm import CommBackendProtocol, TransferRequest, TransferResult
from sagellm.core.config import (
    ConfigError,
    OptionSpec,
    ResolvedConfig,
    add_argparse_options,
    load_config,
    option_specs,
    overrides_from_namespace,
    resolve_config,
    with_config_options,
)
from sagellm.core.engine_info import EngineInfo, EngineKind, EngineState
from sagellm.core.ir import (
    ExecutionPlan,
    IRCycleError,
    IRGraph,
    IRNode,
    IRNodeKind,
    read_trace,
    write_trace,
)
from sagellm.core.kv import KV_DTYPE_BITS, KV_LAYOUTS, KVCacheSchema, KVTier
from sagellm.core.kv_backend import (
    EvictResult,
    KVBackendProtocol,
    KVBlockKey,
    KVTransferPlan,
    LoadSpec,
    StoreSpec,
    TierStats,
    TransferDirection,
)
from sagellm.core.quant import KV_GRANULARITIES, KV_QUANT_DTYPES, WEIGHT_FORMATS, QuantizationProfile
from sagellm.core.registry import (
    DuplicateNameError,
    Registry,
    RegistryError,
    RegistryImportError,
    UnknownNameError,
)
from sagellm.core.request import RequestMetadata
from sagellm.core.serialization import SerializableMixin, SerializationError

__all__ = [
    "DEVICE_KINDS",
    "INTERCONNECTS",
    "KNOWN_FEATURES",
    "KV_DTYPE_BITS",
    "KV_GRANULARITIES",
    "KV_LAYOUTS",
    "KV_QUANT_DTYPES",
    "WEIGHT_FORMATS",
    "CapabilityDescriptor",
    "CommBackendProtocol",
    "ConfigError",
    "DuplicateNameError",
    "EngineInfo",
    "EngineKind",
    "EngineState",
    "EvictResult",
    "ExecutionPlan",
    "IRCycleError",
    "IRGraph",
    "IRNode",
    "IRNodeKind",
    "KVBackendProtocol",
    "KVBlockKey",
    "KVCacheSchema",
    "KVTier",
    "KVTransferPlan",
    "LoadSpec",
    "OptionSpec",
    "QuantizationProfile",
    "Registry",
    "RegistryError",
    "RegistryImportError",
    "RequestMetadata",
    "ResolvedConfig",
    "SerializableMixin",
    "SerializationError",
    "StoreSpec",
    "TierStats",
    "TransferDirection",
    "TransferRequest",
    "TransferResult",
    "UnknownNameError",
    "add_argparse_options",
    "load_config",
    "option_specs",
    "overrides_from_namespace",
    "read_trace",
    "resolve_config",
    "with_config_options",
    "write_trace",
]
