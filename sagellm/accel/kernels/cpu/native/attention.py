"""Decode attention over the paged KV cache through the native kernel (``decode_attention.cpp``).

One query token per sequence attends over that sequence's history straight out of its cache
blocks: no gathered or dense copy of the history exists, and each cached key and value row is
read once for all the query heads of its KV head group.
"""

from __future__ import annotations

import torch

from sagellm.accel.kernels.cpu.native import NativeKernels

#: Cache element types the kernel reads, by its ``cache_dtype`` code.
CACHE_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def decode_supported(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether :func:`paged_decode_attention` takes these tensors (else use the torch kernels)."""
    return (
        query.device.type == "cpu"
        and query.dim() == 3
        and query.dtype in CACHE_DTYPES
        and k_cache.dim() == 4
        and v_cache.dim() == 4
        and k_cache.dtype in CACHE_DTYPES
        and v_cache.dtype == k_cache.dtype
        and k_cache.stride(-1) == 1
        and v_cache.stride(-1) == 1
        and k_cache.shape[:3] == v_cache.shape[:3]
        and query.size(-1) == k_cache.size(-1)
        and query.size(1) % k_cache.size(2) == 0
    )


def decode_tables_checked(block_table: torch.Tensor, kv_seqlens: torch.Tensor, block_size: int,
                          batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The block table and lengths as contiguous int32, after checking the table covers every history.

    Every layer of a step reads the same table, so a caller checks once per step and passes
    ``tables_checked=True`` to :func:`paged_decode_attention`.

    Raises:
        ValueError: lengths and table rows that disagree (with each other or with ``batch``), or a
            table too narrow for the longest history (the kernel would read out of bounds).
    """
    lengths = kv_seqlens.to(torch.int32).contiguous()
    table = block_table.to(torch.int32).contiguous()
    batch = lengths.numel() if batch is None else batch
    if lengths.numel() != batch or table.dim() != 2 or table.size(0) != batch:
        raise ValueError(f"paged_decode_attention: {batch} queries but kv_seqlens {tuple(kv_seqlens.shape)} "
                         f"and block_table {tuple(block_table.shape)}")
    longest = int(lengths.max()) if batch else 0
    if -(-longest // block_size) > table.size(1):
        raise ValueError(f"paged_decode_attention: a history of {longest} positions needs "
                         f"{-(-longest // block_size)} blocks, the block table has {table.size(1)} columns")
    return table, lengths


def paged_decode_attention(
    kernels: NativeKernels,
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    kv_seqlens: torch.Tensor,
    *,
    scale: float,
    sliding_window: int | None = None,
    logit_softcapping: float | None = None,
    sinks: torch.Tensor | None = None,
    threads: int | None = None,
    tables_checked: bool = False,
) -> torch.Tensor:
    """Attention of ``query`` [batch, heads, dim] (token ``b`` the last of sequence ``b``) over the cache.

    Args:
        k_cache, v_cache: ``[blocks, block_size, kv_heads, dim]`` (the last dim contiguous), holding
            each sequence's history including this step's token.
        block_table: [batch, >= blocks of the longest history] block ids per sequence.
        kv_seqlens: [batch] history lengths (this step's token included).
        sliding_window: keys older than this many positions are not seen (None / <= 0: all).
        logit_softcapping: ``cap * tanh(score / cap)`` before the softmax (None / 0: off).
        sinks: [heads] one extra logit per head in the softmax's denominator (attention sinks).
        threads: OpenMP threads (default: ``torch.get_num_threads()``).
        tables_checked: ``block_table`` / ``kv_seqlens`` come from :func:`decode_tables_checked`
            for this batch and cache block size (skips that check).

    Returns:
        [batch, heads, v_dim] in the query's dtype.

    Raises:
        ValueError: shapes that do not fit together (the kernel would read out of bounds).
    """
    if not decode_supported(query, k_cache, v_cache):
        raise ValueError(f"paged_decode_attention: unsupported tensors (query {tuple(query.shape)} {query.dtype}, "
                         f"caches {tuple(k_cache.shape)} {k_cache.dtype} / {tuple(v_cache.shape)} {v_cache.dtype}); "
                         "check decode_supported() first")
    batch, heads, dim = query.shape
    num_blocks, block_size, kv_heads, _ = k_cache.shape
    v_dim = v_cache.size(-1)
    if tables_checked:
        table, lengths = block_table, kv_seqlens
    else:
        table, lengths = decode_tables_checked(block_table, kv_seqlens, block_size, batch)
    q = query.to(torch.float32).contiguous()
    out = torch.empty(batch, heads, v_dim, dtype=torch.float32)
    sink = None
    if sinks is not None:
        sink = sinks.to(torch.float32).contiguous()
        if sink.numel() != heads:
            raise ValueError(f"paged_decode_attention: {sink.numel()} sinks for {heads} heads")
    status = kernels.paged_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), table.data_ptr(), lengths.data_ptr(),
        sink.data_ptr() if sink is not None else None, out.data_ptr(),
        batch, heads, kv_heads, dim, v_dim, block_size, table.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        float(scale), float(logit_softcapping or 0.0), int(sliding_window or 0),
        CACHE_DTYPES[k_cache.dtype], int(threads or torch.get_num_threads()),
    )
    if status != 0:
        raise RuntimeError(f"native paged decode attention failed with status {status}")
    return out if query.dtype == torch.float32 else out.to(query.dtype)
