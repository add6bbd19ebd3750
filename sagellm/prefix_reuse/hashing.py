"""Stable, chained content hashes of full token blocks.

LMDeploy 0.11 keys its prefix trie with ``hash(('random', tuple(tokens)))``: a salted
Python hash that changes with ``PYTHONHASHSEED``, so it cannot name a block on disk or
in another process. sagellm names a block by a chained blake2b digest instead::

    tokens      t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9          (block_size = 4)
                 block 0     | block 1     | partial: never hashed
    h0 = H( ROOT          || le_int32(t0..t3) || ns )
    h1 = H( h0            || le_int32(t4..t7) || ns )

``ROOT`` is ``DIGEST_SIZE`` zero bytes (or the ``parent`` passed in), ``ns`` is
``PrefixNamespace.to_bytes()``: model identity, adapter, KV dtype and block size, so
caches that must never share blocks never produce equal hashes. Equal ``h1`` therefore
means "same namespace, same 8 leading tokens" (up to a 128-bit collision, which the
radix index guards against by comparing tokens on every hit).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sagellm.core.kv import KV_DTYPE_BITS
from sagellm.core.validation import check_choice, check_power_of_two, check_str, invalid

#: Bytes of one block hash.
DIGEST_SIZE = 16
#: Parent of the first block of every prefix.
ROOT_PARENT = bytes(DIGEST_SIZE)
#: Bumped whenever the byte layout hashed below changes (old SSD caches then simply miss).
HASH_VERSION = 1

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def _digest(data: bytes) -> bytes:
    """The hash function; a module attribute so tests can force collisions."""
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


@dataclass(frozen=True)
class PrefixNamespace:
    """What must match for two equal token prefixes to share KV blocks.

    Attributes:
        model: stable identity of the weights (name + revision, or a weights digest);
            not a local path, which differs between machines.
        adapter: LoRA adapter name ("" = base model).
        kv_dtype: KV element type name (one of ``KV_DTYPE_BITS``).
        block_size: tokens per block; a power of two.
        extra: anything else that changes KV bytes (tensor-parallel rank, quant policy...).
    """

    model: str
    adapter: str = ""
    kv_dtype: str = "float16"
    block_size: int = 64
    extra: str = ""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "model", self.model)
        check_str(owner, "adapter", self.adapter, allow_empty=True)
        check_choice(owner, "kv_dtype", self.kv_dtype, tuple(KV_DTYPE_BITS))
        check_power_of_two(owner, "block_size", self.block_size)
        check_str(owner, "extra", self.extra, allow_empty=True)

    def to_bytes(self) -> bytes:
        """Canonical, length-prefixed encoding (the ``ns`` of every block hash)."""
        parts = [b"sagellm-prefix", str(HASH_VERSION).encode()]
        parts += [s.encode("utf-8") for s in (self.model, self.adapter, self.kv_dtype, str(self.block_size), self.extra)]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)

    @property
    def tag(self) -> str:
        """Short hex name of the namespace (logs, ``KVBlockKey.namespace``)."""
        return hashlib.blake2b(self.to_bytes(), digest_size=8).hexdigest()


def namespace_bytes(namespace: PrefixNamespace | bytes, block_size: int) -> bytes:
    """``namespace`` as bytes, checking a ``PrefixNamespace`` agrees with ``block_size``."""
    if isinstance(namespace, PrefixNamespace):
        if namespace.block_size != block_size:
            raise invalid("block_hashes", "namespace", namespace, f"a namespace with block_size {block_size}")
        return namespace.to_bytes()
    if isinstance(namespace, (bytes, bytearray, memoryview)):
        return bytes(namespace)
    raise invalid("block_hashes", "namespace", namespace, "a PrefixNamespace or bytes")


def token_bytes(tokens: Sequence[int] | np.ndarray) -> bytes:
    """Token ids as little-endian int32 bytes (4 bytes per token).

    Raises:
        ValueError: not a 1-D sequence of integers within int32.
    """
    arr = np.asarray(tokens)
    if arr.size == 0:
        return b""
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise invalid("block_hashes", "tokens", _short(tokens), "a 1-D sequence of integer token ids")
    if int(arr.min()) < _INT32_MIN or int(arr.max()) > _INT32_MAX:
        raise invalid("block_hashes", "tokens", _short(tokens), "token ids within int32")
    return arr.astype("<i4", copy=False).tobytes()


def block_hashes(
    tokens: Sequence[int] | np.ndarray,
    block_size: int,
    namespace: PrefixNamespace | bytes,
    parent: bytes | None = None,
) -> list[bytes]:
    """Chained hashes of every *full* block of ``tokens``; a trailing partial block is ignored.

    Args:
        tokens: token ids (ints within int32).
        block_size: tokens per block (a power of two).
        namespace: a ``PrefixNamespace`` (its block size must equal ``block_size``) or its bytes.
        parent: hash of the block before ``tokens[0]`` when hashing a continuation;
            None = ``tokens`` start a prefix.

    Returns:
        ``len(tokens) // block_size`` digests of ``DIGEST_SIZE`` bytes, in order. Stable across
        processes, restarts and machines.
    """
    check_power_of_two("block_hashes", "block_size", block_size)
    ns = namespace_bytes(namespace, block_size)
    if parent is not None and (not isinstance(parent, bytes) or not parent):
        raise invalid("block_hashes", "parent", parent, "non-empty bytes or None")
    data = token_bytes(tokens)
    step = 4 * block_size
    prev = ROOT_PARENT if parent is None else parent
    out: list[bytes] = []
    for start in range(0, len(data) - step + 1, step):
        prev = _digest(prev + data[start : start + step] + ns)
        out.append(prev)
    return out


def _short(tokens: object) -> object:
    if isinstance(tokens, (list, tuple)) and len(tokens) > 8:
        return f"{type(tokens).__name__} of {len(tokens)} items starting {list(tokens[:8])}"
    return tokens
