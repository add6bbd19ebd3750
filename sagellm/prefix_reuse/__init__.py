"""sagellm.prefix_reuse: chained block hashes and the radix prefix index over all KV tiers.

See README.md in this folder for the contract. Never imports ``lmdeploy`` or ``torch``.
"""

from sagellm.prefix_reuse.hashing import (
    DIGEST_SIZE,
    HASH_VERSION,
    ROOT_PARENT,
    PrefixNamespace,
    block_hashes,
    token_bytes,
)
from sagellm.prefix_reuse.radix import (
    BlockInfo,
    BlockLineage,
    BlockLocation,
    InsertResult,
    LocationConflict,
    LocationUpdate,
    MatchedBlock,
    MatchResult,
    PrefixHitStats,
    ProbedBlock,
    RadixIndex,
    RemovedBlock,
    RemoveResult,
)

__all__ = [
    "DIGEST_SIZE",
    "HASH_VERSION",
    "ROOT_PARENT",
    "BlockInfo",
    "BlockLineage",
    "BlockLocation",
    "InsertResult",
    "LocationConflict",
    "LocationUpdate",
    "MatchResult",
    "MatchedBlock",
    "PrefixHitStats",
    "PrefixNamespace",
    "ProbedBlock",
    "RadixIndex",
    "RemoveResult",
    "RemovedBlock",
    "block_hashes",
    "token_bytes",
]
