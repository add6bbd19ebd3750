"""sagellm.kv_runtime: KV block stores (host DRAM, SSD, tiered) behind ``KVBackendProtocol``.

See README.md in this folder for the contract. Imports torch, the standard library,
``sagellm.core``, ``sagellm.kv_policy`` and ``sagellm.prefix_reuse`` value types; never
``lmdeploy``. Importing it starts nothing (writer threads start with an ``SsdBlockStore``).
"""

from sagellm.kv_runtime.host import HostBlockPool, HostPoolStats
from sagellm.kv_runtime.layout import (
    BlockTensorSpec,
    block_layout,
    pack_block,
    schema_fingerprint,
    torch_dtype,
    typed_views,
    unpack_block,
)
from sagellm.kv_runtime.ssd import BlockFileError, SsdBlockStore, SsdStats, block_file_name
from sagellm.kv_runtime.tiered import FetchResult, TieredKVStore
from sagellm.kv_runtime.types import LoadedBlocks, LoadReport, StoreHints, TierEvent

__all__ = [
    "BlockFileError",
    "BlockTensorSpec",
    "FetchResult",
    "HostBlockPool",
    "HostPoolStats",
    "LoadReport",
    "LoadedBlocks",
    "SsdBlockStore",
    "SsdStats",
    "StoreHints",
    "TierEvent",
    "TieredKVStore",
    "block_file_name",
    "block_layout",
    "pack_block",
    "schema_fingerprint",
    "torch_dtype",
    "typed_views",
    "unpack_block",
]
