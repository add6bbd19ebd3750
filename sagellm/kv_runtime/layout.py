"""Byte layout of one KV block, from a ``KVCacheSchema``.

A block's payload is every layer's K and V for ``block_size`` tokens, concatenated in
this order (``H`` = num_kv_heads, ``D``/``Dv`` = key/value head dims, ``bs`` = block_size)::

    layer 0: k [bs, H, D']   v [bs, H, Dv']   (k_scale_zero [bs, H, 2]  v_scale_zero [bs, H, 2])
    layer 1: ...                               ^ only for int8 / int4

``D' = D // 2`` for int4 (two values per byte), else ``D``. Element types: the float dtypes
as named; fp8 as ``torch.float8_e4m3fn``/``float8_e5m2``; int8 and int4 as ``uint8`` (as
LMDeploy 0.11's ``CacheEngine`` stores them); scale/zero in ``schema.scale_dtype``. The total
is exactly ``schema.bytes_per_block()``. Each tensor is the slice ``cache[layer][block_id]``
of LMDeploy's paged ``[num_blocks, bs, H, D]`` caches, so the adapter copies with one
``copy_`` per tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from sagellm.core.kv import KVCacheSchema
from sagellm.core.validation import invalid

_FLOAT_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
    "int8": torch.uint8,
    "int4": torch.uint8,
}

Payload = bytes | bytearray | memoryview | torch.Tensor


@dataclass(frozen=True)
class BlockTensorSpec:
    """One tensor of a block payload.

    Attributes:
        name: ``"k"``, ``"v"``, ``"k_scale_zero"`` or ``"v_scale_zero"``.
        layer: layer index.
        shape: tensor shape.
        dtype: torch dtype.
        offset: byte offset inside the payload.
        nbytes: byte length.
    """

    name: str
    layer: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    nbytes: int


def torch_dtype(name: str) -> torch.dtype:
    """Storage dtype of a KV dtype name (int8/int4 are stored as uint8)."""
    try:
        return _FLOAT_DTYPES[name]
    except KeyError:
        raise invalid("torch_dtype", "name", name, "one of " + ", ".join(_FLOAT_DTYPES)) from None


@lru_cache(maxsize=64)
def block_layout(schema: KVCacheSchema) -> tuple[BlockTensorSpec, ...]:
    """The tensors of one block, in payload order (see module docstring)."""
    bs, h = schema.block_size, schema.num_kv_heads
    data_dtype = torch_dtype(schema.dtype)
    k_dim = schema.head_dim // 2 if schema.dtype == "int4" else schema.head_dim
    v_dim = schema.value_head_dim // 2 if schema.dtype == "int4" else schema.value_head_dim
    parts: list[tuple[str, tuple[int, ...], torch.dtype]] = [("k", (bs, h, k_dim), data_dtype), ("v", (bs, h, v_dim), data_dtype)]
    if schema.is_scaled:
        scale = torch_dtype(schema.scale_dtype)
        parts += [("k_scale_zero", (bs, h, 2), scale), ("v_scale_zero", (bs, h, 2), scale)]
    specs: list[BlockTensorSpec] = []
    offset = 0
    for layer in range(schema.num_layers):
        for name, shape, dtype in parts:
            nbytes = _numel(shape) * dtype.itemsize
            specs.append(BlockTensorSpec(name, layer, shape, dtype, offset, nbytes))
            offset += nbytes
    if offset != schema.bytes_per_block():
        raise AssertionError(f"block layout is {offset} bytes, schema says {schema.bytes_per_block()}")
    return tuple(specs)


def schema_fingerprint(schema: KVCacheSchema) -> bytes:
    """8 bytes naming the block byte layout; files written under another fingerprint are ignored."""
    text = "|".join(
        str(x)
        for x in (
            "sagellm-kv-block/1",
            schema.num_layers,
            schema.num_kv_heads,
            schema.head_dim,
            schema.value_head_dim,
            schema.block_size,
            schema.dtype,
            schema.layout,
            schema.scale_dtype if schema.is_scaled else "-",
        )
    )
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def pack_block(schema: KVCacheSchema, tensors: Sequence[torch.Tensor]) -> bytes:
    """Concatenate one block's tensors (in ``block_layout`` order) into payload bytes.

    Raises:
        ValueError: wrong number of tensors, or a tensor of the wrong shape or dtype.
    """
    specs = block_layout(schema)
    if len(tensors) != len(specs):
        raise invalid("pack_block", "tensors", f"{len(tensors)} tensors", f"{len(specs)} tensors (see block_layout)")
    out = bytearray(schema.bytes_per_block())
    for spec, t in zip(specs, tensors):
        _check_tensor(spec, t)
        raw = t.detach().to("cpu").contiguous().view(torch.uint8).reshape(-1)
        out[spec.offset : spec.offset + spec.nbytes] = raw.numpy().tobytes()
    return bytes(out)


def stacked_shape(schema: KVCacheSchema) -> tuple[int, ...] | None:
    """``(num_layers, 2, block_size, num_kv_heads, head_dim)`` when the payload is exactly that
    array (unscaled KV, K and V of one shape), else None.

    Then one block of a ``[layers, blocks, ...]`` K cache and V cache packs with one stack and
    unpacks with two copies (:func:`pack_stacked` / :func:`unpack_stacked`) instead of a copy
    per tensor: the per-layer copies were the largest cost of a prefix restore after the
    eviction scan (multi-turn chat, tiny model, 4 layers).
    """
    if schema.is_scaled or schema.dtype == "int4" or schema.value_head_dim != schema.head_dim:
        return None
    return (schema.num_layers, 2, schema.block_size, schema.num_kv_heads, schema.head_dim)


def pack_stacked(schema: KVCacheSchema, keys: torch.Tensor, values: torch.Tensor) -> bytes:
    """:func:`pack_block` of ``[layers, block_size, heads, dim]`` K and V (same bytes), when :func:`stacked_shape`."""
    shape = stacked_shape(schema)
    if shape is None:
        raise invalid("pack_stacked", "schema", schema.dtype, "an unscaled schema with K and V of one shape")
    block = torch.stack((keys, values), dim=1)
    if tuple(block.shape) != shape or block.dtype != torch_dtype(schema.dtype):
        raise invalid("pack_stacked", "keys/values", f"{tuple(block.shape)} {block.dtype}",
                      f"{shape} {torch_dtype(schema.dtype)} once stacked")
    return block.to("cpu").view(torch.uint8).reshape(-1).numpy().tobytes()


def unpack_stacked(schema: KVCacheSchema, data: Payload, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Write one payload into ``[layers, block_size, heads, dim]`` views ``keys`` and ``values`` (inverse of
    :func:`pack_stacked`)."""
    shape = stacked_shape(schema)
    if shape is None:
        raise invalid("unpack_stacked", "schema", schema.dtype, "an unscaled schema with K and V of one shape")
    block = as_byte_tensor(data, schema.bytes_per_block()).view(torch_dtype(schema.dtype)).view(shape)
    keys.copy_(block[:, 0])
    values.copy_(block[:, 1])


def _check_tensor(spec: BlockTensorSpec, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
        got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else repr(t)
        raise invalid("pack_block", f"layer {spec.layer} {spec.name}", got, f"a tensor {spec.shape} {spec.dtype}")


def as_byte_tensor(payload: Payload, nbytes: int) -> torch.Tensor:
    """A flat CPU uint8 tensor over ``payload`` (copied for immutable ``bytes``), checked for length."""
    if isinstance(payload, torch.Tensor):
        t = payload.detach().to("cpu").contiguous().view(torch.uint8).reshape(-1)
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        t = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if len(payload) else torch.empty(0, dtype=torch.uint8)
    else:
        raise invalid("payload", "type", type(payload).__name__, "bytes, bytearray, memoryview or a tensor")
    if t.numel() != nbytes:
        raise invalid("payload", "length", t.numel(), f"{nbytes} bytes (one block)")
    return t


def typed_views(schema: KVCacheSchema, flat: torch.Tensor, *, in_place: bool = False) -> list[torch.Tensor]:
    """Views of a flat uint8 block buffer as the block's tensors.

    A tensor whose storage offset is not a multiple of its element size cannot be viewed in
    place: it is copied, or, with ``in_place=True`` (the caller means to write through the
    views), a ``ValueError`` is raised.
    """
    out = []
    for spec in block_layout(schema):
        piece = flat[spec.offset : spec.offset + spec.nbytes]
        if piece.storage_offset() % spec.dtype.itemsize:
            if in_place:
                raise invalid(
                    "typed_views", f"layer {spec.layer} {spec.name}", f"byte offset {piece.storage_offset()}",
                    f"a multiple of {spec.dtype.itemsize} for an in-place {spec.dtype} view (copy bytes instead)",
                )
            piece = piece.clone()
        out.append(piece.view(spec.dtype).view(spec.shape))
    return out


def unpack_block(schema: KVCacheSchema, data: Payload) -> list[torch.Tensor]:
    """Payload bytes -> the block's tensors in ``block_layout`` order (CPU, owning their memory)."""
    flat = as_byte_tensor(data, schema.bytes_per_block())
    if isinstance(data, torch.Tensor):
        flat = flat.clone()
    return typed_views(schema, flat)
