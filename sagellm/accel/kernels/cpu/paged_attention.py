"""Paged attention over LMDeploy's block layout, in plain torch.

Layout (LMDeploy's default backend):

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    block_offsets:    [batch, max_blocks_per_seq]  block ids of each sequence, in order
    query:            [num_tokens, num_heads, head_dim]  the new tokens of all sequences, packed
    key, value:       [num_tokens, num_kv_heads, head_dim]

Positions and slots: see :mod:`.packed_batch`. Everything is vectorized across the batch (no
per-sequence Python loop). :func:`paged_attention` picks one of three paths, all exact softmax
attention through ``scaled_dot_product_attention`` with grouped-query heads handled natively
(``enable_gqa``, no ``repeat_interleave`` copies):

* decode (one new token per sequence): gather each sequence's history, additive key mask; with a
  dense decode history, one call per bucket of similar history lengths (``dense_decode``);
* fresh prefill (no cached history, causal, no window): the padded [batch, max_q_len] grid with
  ``is_causal``, no mask tensor at all, or one call per sequence when the padding would cost more
  than the calls;
* anything else (prefill over a cached prefix, mixed batches, sliding windows): gathered history
  and a causal mask offset by each sequence's history, built once per step.

History is gathered with one ``index_select`` over the cache viewed as flat slots; positions past
a sequence's length read that sequence's position 0 (finite) and are masked out, so never-written
slots (uninitialized memory, possibly NaN) cannot reach the output.

Quantized KV (LMDeploy ``quant_policy`` 8 / 4): pass a :class:`~.kv_quant.KVQuant` holding the
per-token-per-head scale/zero tensors; the caches are then uint8 blocks (int8, int4) or float8
blocks (fp8_e4m3, fp8_e5m2), see ``kv_quant``. :func:`fill_kv_cache` quantizes the new tokens
into them and :func:`paged_attention` dequantizes the gathered history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu.dense_decode import DenseHistory
from sagellm.accel.kernels.cpu.kv_quant import KVQuant, dequantize_kv, quantize_kv
from sagellm.accel.kernels.cpu.packed_batch import (
    PackedBatch,
    _memo,
    additive_mask,
    attention_bias,
    attention_mask,
    history_slots,
    pack_batch,
    read_slots,
    slot_view,
    token_cache_slots,
)
from sagellm.accel.quantization.fp8 import FP8_DTYPES

__all__ = [
    "PackedBatch",
    "attention_mask",
    "fill_kv_cache",
    "gather_dequantized",
    "gather_history",
    "gather_kv",
    "pack_batch",
    "paged_attention",
]

_FP8 = frozenset(FP8_DTYPES.values())


def fill_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_offsets: torch.Tensor,
    packed: PackedBatch,
    quant: KVQuant | None = None,
) -> None:
    """Write the new tokens' K/V into their blocks, in place (quantized with their scale/zero when ``quant``)."""
    block_size = k_cache.size(1)
    slots = token_cache_slots(packed, block_offsets, block_size)
    writes = [(key, k_cache), (value, v_cache)]
    if quant is not None:
        writes = []
        kv_dtype = quant.kv_dtype
        for states, cache, scales_zeros in (
            (key, k_cache, quant.k_scales_zeros),
            (value, v_cache, quant.v_scales_zeros),
        ):
            codes, sz = quantize_kv(states, kv_dtype, scales_zeros.dtype)
            writes += [(codes, cache), (sz, scales_zeros)]
    for states, cache in writes:
        states = states.to(cache.dtype)
        if cache.dtype in _FP8:  # torch's CPU index_copy_ has no float8 kernel: copy the bytes
            states, cache = states.view(torch.uint8), cache.view(torch.uint8)
        flat = slot_view(cache)
        if flat is not None:
            flat.index_copy_(0, slots, states)
        else:
            cache[slots // block_size, slots % block_size] = states


def gather_kv(cache: torch.Tensor, block_offsets: torch.Tensor, max_kv_len: int) -> torch.Tensor:
    """[batch, max_kv_len (rounded up to whole blocks), kv_heads, dim] view of each sequence's history."""
    block_size = cache.size(1)
    num_blocks = (max_kv_len + block_size - 1) // block_size
    gathered = cache[block_offsets[:, :num_blocks]]  # [batch, nb, bs, h, d]
    batch, nb, bs, heads, dim = gathered.shape
    return gathered.reshape(batch, nb * bs, heads, dim)


def gather_history(
    cache: torch.Tensor, block_offsets: torch.Tensor, kv_seqlens: torch.Tensor, packed: PackedBatch
) -> torch.Tensor:
    """[batch, max_kv_len, kv_heads, dim]: each sequence's history; padded positions repeat its position 0."""
    slots = history_slots(packed, block_offsets, kv_seqlens, cache.size(1))
    return read_slots(cache, slots).view(kv_seqlens.numel(), packed.max_kv_len, *cache.shape[2:])


def gather_dequantized(
    cache: torch.Tensor,
    scales_zeros: torch.Tensor,
    kv_dtype: str,
    block_offsets: torch.Tensor,
    kv_seqlens: torch.Tensor,
    packed: PackedBatch,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Like :func:`gather_kv`, dequantized from ``kv_dtype`` (a ``KV_FORMATS`` name) to ``dtype``;
    positions at or past ``kv_seqlens[b]`` are zero."""
    codes = gather_kv(cache, block_offsets, packed.max_kv_len)
    sz = gather_kv(scales_zeros, block_offsets, packed.max_kv_len)  # [b, L, h, 2]
    valid = torch.arange(sz.size(1), device=sz.device)[None, :] < kv_seqlens[:, None]
    sz = torch.where(valid[:, :, None, None], sz, torch.zeros((), dtype=sz.dtype, device=sz.device))
    values = dequantize_kv(codes, sz, kv_dtype, dtype)
    if cache.dtype in _FP8:  # a never-written float8 slot may hold NaN, which a zero scale keeps
        values = torch.where(valid[:, :, None, None], values, torch.zeros((), dtype=dtype, device=values.device))
    return values


def _history(cache, scales_zeros, kv_dtype, block_offsets, kv_seqlens, packed, dtype):
    """Gathered history in ``dtype`` (dequantized from ``kv_dtype`` when ``scales_zeros`` is given)."""
    if scales_zeros is None:
        return gather_history(cache, block_offsets, kv_seqlens, packed).to(dtype)
    codes = gather_history(cache, block_offsets, kv_seqlens, packed)
    sz = gather_history(scales_zeros, block_offsets, kv_seqlens, packed)
    return dequantize_kv(codes, sz, kv_dtype, dtype)


def _query_grid(query: torch.Tensor, packed: PackedBatch, batch: int) -> torch.Tensor:
    """[batch, heads, max_q_len, dim]: packed queries placed on the padded grid (zeros elsewhere)."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    if packed.max_q_len * batch == query.size(0):  # no padding: the packed tokens are the grid
        grid = query
    else:
        grid = query.new_zeros(batch * packed.max_q_len, num_heads, head_dim)
        grid.index_copy_(0, packed.token_slot, query)
    return grid.view(batch, packed.max_q_len, num_heads, head_dim).transpose(1, 2)


def _from_grid(out: torch.Tensor, packed: PackedBatch, num_tokens: int) -> torch.Tensor:
    """[batch, heads, max_q_len, dim] -> packed [num_tokens, heads, dim]."""
    batch, heads, max_q, dim = out.shape
    out = out.transpose(1, 2).reshape(batch * max_q, heads, dim)
    if batch * max_q == num_tokens:
        return out
    return out.index_select(0, packed.token_slot)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_offsets: torch.Tensor,
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    packed: PackedBatch,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    logit_softcapping: float | None = None,
    sinks: torch.Tensor | None = None,
    quant: KVQuant | None = None,
    history: tuple[torch.Tensor, torch.Tensor] | None = None,
    new_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention of the packed new tokens over each sequence's paged history.

    With ``quant``, the caches hold quantized blocks and the history is dequantized first. ``history``,
    when given, is each sequence's K and V already gathered (``[batch, kv_heads, max_kv_len, dim]``
    in the query dtype, e.g. from :class:`~.dense_decode.DenseDecodeKV`); the caches are not read.
    ``new_kv``: this step's packed K and V (``[num_tokens, kv_heads, dim]``, as written to the caches);
    a fresh prefill of unquantized caches attends over them directly (:func:`_fresh_prefill`).
    Returns [num_tokens, num_heads, v_head_dim] in the query dtype.
    """
    batch = q_seqlens.numel()
    num_tokens = query.size(0)
    window = sliding_window if sliding_window is not None and sliding_window > 0 else None
    if (new_kv is not None and history is None and quant is None and causal and window is None
            and packed.no_history and not logit_softcapping and sinks is None
            and new_kv[0].dtype == query.dtype and new_kv[1].dtype == query.dtype):
        return _fresh_prefill(query, new_kv[0], new_kv[1], q_seqlens, packed, scale)
    if isinstance(history, DenseHistory):
        if causal and not logit_softcapping and sinks is None and packed.is_decode:
            return _bucketed_decode(query, history, scale, window, packed)
        history = history.batch_order(packed.max_kv_len)
    if history is not None:
        k, v = history
    elif quant is None:
        gather = (None, None, block_offsets, kv_seqlens, packed, query.dtype)
        k = _history(k_cache, *gather).transpose(1, 2)  # [b, hkv, L, d] (a view; SDPA takes the strides as they are)
        v = _history(v_cache, *gather).transpose(1, 2)
    else:
        gather = (quant.kv_dtype, block_offsets, kv_seqlens, packed, query.dtype)
        k = _history(k_cache, quant.k_scales_zeros, *gather).transpose(1, 2)
        v = _history(v_cache, quant.v_scales_zeros, *gather).transpose(1, 2)
    q = _query_grid(query, packed, batch)  # [b, h, q, d]
    gqa = k.size(1) != q.size(1)

    if logit_softcapping or sinks is not None:
        mask = attention_mask(q_seqlens, kv_seqlens, packed.max_q_len, packed.max_kv_len, causal, window)
        out = _explicit_attention(q, k, v, mask, scale, logit_softcapping, sinks)
    elif causal and window is None and packed.no_history:
        # fresh prefill: query i of a sequence sees keys 0..i, all of them its own (padded keys only
        # ever meet padded query rows, which are dropped)
        lengths = q_seqlens.tolist()
        if _padding_outweighs_calls(lengths, packed.max_q_len, threads=torch.get_num_threads()):
            out = q.new_empty(q.shape[:-1] + (v.size(-1),))
            for row, length in enumerate(lengths):
                out[row : row + 1, :, :length] = F.scaled_dot_product_attention(
                    q[row : row + 1, :, :length], k[row : row + 1, :, :length], v[row : row + 1, :, :length],
                    is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        bias = attention_bias(packed, q_seqlens, kv_seqlens, query.dtype, causal, window)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)
    return _from_grid(out, packed, num_tokens)


def _fresh_prefill(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, q_seqlens: torch.Tensor,
                   packed: PackedBatch, scale: float) -> torch.Tensor:
    """Causal attention of a fresh prefill (no history) over the step's own packed K and V.

    Every key a query sees is one of this step's, so nothing is read back from the caches. Query
    i of a sequence sees its keys 0..i; a padded grid is built only when one call over it, copies
    included, costs less than a call per sequence (:func:`_padding_outweighs_calls`), otherwise each
    sequence's rows are attended in place and written straight into the packed output.
    """
    batch = q_seqlens.numel()
    gqa = key.size(1) != query.size(1)
    lengths = q_seqlens.tolist()
    if _padding_outweighs_calls(lengths, packed.max_q_len, copies_grid=True,
                                threads=torch.get_num_threads()):  # False for a single sequence
        out = query.new_empty(query.size(0), query.size(1), value.size(-1))
        start = 0
        for length in lengths:
            rows = slice(start, start + length)
            out[rows] = F.scaled_dot_product_attention(
                _one_sequence(query[rows]), _one_sequence(key[rows]), _one_sequence(value[rows]),
                is_causal=True, scale=scale, enable_gqa=gqa)[0].transpose(0, 1)
            start += length
        return out
    q = _query_grid(query, packed, batch)
    k = _query_grid(key, packed, batch)
    v = _query_grid(value, packed, batch)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    return _from_grid(out, packed, query.size(0))


def _one_sequence(rows: torch.Tensor) -> torch.Tensor:
    """[length, heads, dim] packed rows -> [1, heads, length, dim] (a view, as on the padded grid).

    Four dimensions, as the grid path passes them: on 3-D ``[heads, length, dim]`` views SDPA took a
    2-4x slower path on the cpu and its output differed from the grid path's in the last bits.
    """
    return rows.transpose(0, 1).unsqueeze(0)


#: One more causal attention call costs about as much as this many (query, key) pairs on one thread
#: (about 30 us against about 10 ns per pair at 4 heads x 64 dims on the 2-core reference machine).
#: The call's cost does not shrink with threads, the pairs' does.
PREFILL_CALL_PAIRS = 3000

#: Placing one padded row on the grid (query, key and value copied in, the output copied out) costs
#: about as much as this many pairs. Measured on the Intel host (float32, 4 query / 2 KV heads x 64
#: dims, best of 5): 3 prompts of 230-245 tokens, grid against per sequence, 2.07 / 1.71 ms on one
#: thread and 1.88 / 0.97 ms on two; prompts of 50, 60, 400, 100 tokens 5.55 / 1.62 ms; 16 prompts of
#: 60-64 tokens 1.78 / 1.28 ms on one thread, 0.80 / 0.91 on two; 16 of 18-22 tokens 0.34 / 0.47 ms.
GRID_ROW_PAIRS = 60


def _padding_outweighs_calls(lengths: list[int], max_len: int, *, copies_grid: bool = False,
                             threads: int = 1) -> bool:
    """Whether a fresh prefill is cheaper one sequence at a time than on the padded grid.

    The padded grid computes ``batch * max_len**2`` causal pairs (halved by the mask, like the
    real ones), plus, with ``copies_grid``, the copies of every grid row when the lengths differ;
    per sequence it is ``sum(length**2)`` plus a call each, on ``threads`` threads.
    """
    if len(lengths) < 2:
        return False
    grid = len(lengths) * max_len * max_len
    if copies_grid and len(lengths) * max_len != sum(lengths):
        grid += len(lengths) * max_len * GRID_ROW_PAIRS
    return sum(n * n for n in lengths) + len(lengths) * PREFILL_CALL_PAIRS * threads < grid


def _bucketed_decode(query, history: DenseHistory, scale, window, packed: PackedBatch) -> torch.Tensor:
    """Decode attention over a :class:`DenseHistory`, one SDPA call per bucket of rows.

    The query heads sharing a KV head are that call's query rows (``[rows, kv_heads, group, dim]``),
    so GQA needs no repeated K/V. Returns [batch, heads, v_dim] in batch order.
    """
    batch, heads, dim = query.shape
    kv_heads = history.keys.size(1)
    group = heads // kv_heads
    layout = history.layout
    q = query if layout.in_batch_order else query.index_select(0, layout.order)
    out = query.new_empty(batch, heads, history.values.size(-1))
    for start, end, length in layout.buckets:
        rows = end - start
        bias = _memo(packed, ("decode_bias", start, end, length, query.dtype, window),
                     lambda: _decode_bias(layout.kv_seqlens[start:end], length, query.dtype, window))
        attended = F.scaled_dot_product_attention(
            q[start:end].view(rows, kv_heads, group, dim),
            history.keys[start:end, :, :length],
            history.values[start:end, :, :length],
            attn_mask=bias,
            scale=scale,
        )
        out[start:end] = attended.reshape(rows, heads, -1)
    return out if layout.in_batch_order else out.index_select(0, layout.inverse)


def _decode_bias(kv_seqlens: torch.Tensor, length: int, dtype: torch.dtype, window: int | None) -> torch.Tensor:
    """[rows, 1, 1, length] additive mask of one decode token per row over ``length`` keys."""
    ones = torch.ones_like(kv_seqlens)
    return additive_mask(attention_mask(ones, kv_seqlens, 1, length, True, window), dtype)


def _explicit_attention(q, k, v, mask, scale, logit_softcapping, sinks):
    """Softmax attention with the variants SDPA does not cover (soft-capping, attention sinks)."""
    if k.size(1) != q.size(1):
        group = q.size(1) // k.size(1)
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if logit_softcapping:
        scores = torch.tanh(scores / logit_softcapping) * logit_softcapping
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.to(scores.dtype)[None, :, None, None].expand(scores.shape[0], -1, scores.shape[2], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v)
