"""Paged attention over LMDeploy's block layout, in plain torch.

Layout (LMDeploy's default backend):

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]
    block_offsets:    [batch, max_blocks_per_seq]  block ids of each sequence, in order
    query:            [num_tokens, num_heads, head_dim]  the new tokens of all sequences, packed
    key, value:       [num_tokens, num_kv_heads, head_dim]

Sequence ``b`` owns ``q_seqlens[b]`` packed tokens starting at ``q_start_loc[b]``; after this
step it has ``kv_seqlens[b]`` tokens of history, so its new tokens sit at positions
``kv_seqlens[b] - q_seqlens[b] ... kv_seqlens[b] - 1``:

    position p of sequence b  ->  block block_offsets[b, p // block_size], slot p % block_size

Everything is vectorized across the batch (no per-sequence Python loop): prefill with a cached
prefix, decode, and mixed batches all go through the same gather + masked attention.

Quantized KV (LMDeploy ``quant_policy`` 8 / 4): pass a :class:`~.kv_quant.KVQuant` holding the
per-token-per-head scale/zero tensors; the caches are then uint8 blocks (see ``kv_quant``).
:func:`fill_kv_cache` quantizes the new tokens into them and :func:`paged_attention`
dequantizes the gathered history; positions past a sequence's length decode to zero, so
never-written slots (uninitialized scales) cannot leak NaNs into the masked attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sagellm.accel.kernels.cpu.kv_quant import KVQuant, dequantize_kv, quantize_kv


@dataclass(frozen=True)
class PackedBatch:
    """Per-token indices of a packed batch, computed once per step and shared by every layer."""

    token_seq: torch.Tensor  # [num_tokens] sequence index of each packed token
    token_pos: torch.Tensor  # [num_tokens] absolute position of each token in its sequence
    token_slot: torch.Tensor  # [num_tokens] index into the padded [batch * max_q] query grid
    max_q_len: int
    max_kv_len: int


def pack_batch(q_seqlens: torch.Tensor, kv_seqlens: torch.Tensor, q_start_loc: torch.Tensor) -> PackedBatch:
    """Index arithmetic for a packed batch (see module docstring)."""
    batch = q_seqlens.numel()
    num_tokens = int(q_seqlens.sum())
    device = q_seqlens.device
    token_seq = torch.repeat_interleave(torch.arange(batch, device=device), q_seqlens, output_size=num_tokens)
    token_idx = torch.arange(num_tokens, device=device) - q_start_loc[token_seq]
    history = (kv_seqlens - q_seqlens)[token_seq]
    max_q_len = int(q_seqlens.max()) if batch else 0
    return PackedBatch(
        token_seq=token_seq,
        token_pos=history + token_idx,
        token_slot=token_seq * max_q_len + token_idx,
        max_q_len=max_q_len,
        max_kv_len=int(kv_seqlens.max()) if batch else 0,
    )


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
    blocks = block_offsets[packed.token_seq, packed.token_pos // block_size]
    slots = packed.token_pos % block_size
    if quant is None:
        k_cache[blocks, slots] = key.to(k_cache.dtype)
        v_cache[blocks, slots] = value.to(v_cache.dtype)
        return
    for states, cache, scales_zeros in ((key, k_cache, quant.k_scales_zeros), (value, v_cache, quant.v_scales_zeros)):
        codes, sz = quantize_kv(states, quant.bits, scales_zeros.dtype)
        cache[blocks, slots] = codes
        scales_zeros[blocks, slots] = sz


def gather_kv(cache: torch.Tensor, block_offsets: torch.Tensor, max_kv_len: int) -> torch.Tensor:
    """[batch, max_kv_len (rounded up to whole blocks), kv_heads, dim] view of each sequence's history."""
    block_size = cache.size(1)
    num_blocks = (max_kv_len + block_size - 1) // block_size
    gathered = cache[block_offsets[:, :num_blocks]]  # [batch, nb, bs, h, d]
    batch, nb, bs, heads, dim = gathered.shape
    return gathered.reshape(batch, nb * bs, heads, dim)


def gather_dequantized(
    cache: torch.Tensor,
    scales_zeros: torch.Tensor,
    bits: int,
    block_offsets: torch.Tensor,
    kv_seqlens: torch.Tensor,
    packed: PackedBatch,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Like :func:`gather_kv`, dequantized to ``dtype``; positions at or past ``kv_seqlens[b]`` are zero."""
    codes = gather_kv(cache, block_offsets, packed.max_kv_len)
    sz = gather_kv(scales_zeros, block_offsets, packed.max_kv_len)  # [b, L, h, 2]
    valid = torch.arange(sz.size(1), device=sz.device)[None, :] < kv_seqlens[:, None]
    sz = torch.where(valid[:, :, None, None], sz, torch.zeros((), dtype=sz.dtype, device=sz.device))
    return dequantize_kv(codes, sz, bits, dtype)


def attention_mask(
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    max_q_len: int,
    kv_len: int,
    causal: bool = True,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Boolean [batch, 1, max_q_len, kv_len] mask: True where query i of a sequence may see key j."""
    device = q_seqlens.device
    q_idx = torch.arange(max_q_len, device=device)[None, :, None]
    k_idx = torch.arange(kv_len, device=device)[None, None, :]
    history = (kv_seqlens - q_seqlens)[:, None, None]
    q_pos = history + q_idx
    mask = k_idx < kv_seqlens[:, None, None]
    if causal:
        mask = mask & (k_idx <= q_pos)
    if sliding_window is not None and sliding_window > 0:
        mask = mask & (k_idx > q_pos - sliding_window)
    # padded query rows see nothing; give them one key so softmax stays finite (rows are dropped later)
    valid_q = q_idx < q_seqlens[:, None, None]
    mask = torch.where(valid_q, mask, k_idx == 0)
    return mask[:, None]


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
) -> torch.Tensor:
    """Attention of the packed new tokens over each sequence's paged history.

    With ``quant``, the caches hold uint8 codes and the history is dequantized first.
    Returns [num_tokens, num_heads, v_head_dim] in the query dtype.
    """
    batch = q_seqlens.numel()
    num_heads, head_dim = query.shape[1], query.shape[2]
    # Slots past a sequence's length hold whatever their block held before, uninitialized memory
    # included (possibly NaN/inf); masked scores still multiply V (0 * NaN = NaN), so zero them.
    if quant is None:
        keys = gather_kv(k_cache, block_offsets, packed.max_kv_len).to(query.dtype)
        values = gather_kv(v_cache, block_offsets, packed.max_kv_len).to(query.dtype)
        valid = (torch.arange(keys.size(1), device=keys.device)[None, :] < kv_seqlens[:, None])[:, :, None, None]
        keys = torch.where(valid, keys, 0)
        values = torch.where(valid, values, 0)
    else:  # zeroed while decoding: their scale and zero are masked to 0
        history = (block_offsets, kv_seqlens, packed, query.dtype)
        keys = gather_dequantized(k_cache, quant.k_scales_zeros, quant.bits, *history)
        values = gather_dequantized(v_cache, quant.v_scales_zeros, quant.bits, *history)
    kv_len = keys.size(1)
    num_kv_heads = keys.size(2)

    grid = query.new_zeros(batch * packed.max_q_len, num_heads, head_dim)
    grid[packed.token_slot] = query
    q = grid.view(batch, packed.max_q_len, num_heads, head_dim).transpose(1, 2)  # [b, h, q, d]
    k = keys.transpose(1, 2)  # [b, hkv, L, d]
    v = values.transpose(1, 2)
    if num_kv_heads != num_heads:
        group = num_heads // num_kv_heads
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    mask = attention_mask(q_seqlens, kv_seqlens, packed.max_q_len, kv_len, causal, sliding_window)

    if logit_softcapping or sinks is not None:
        out = _explicit_attention(q, k, v, mask, scale, logit_softcapping, sinks)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    out = out.transpose(1, 2).reshape(batch * packed.max_q_len, num_heads, v.size(-1))
    return out[packed.token_slot]


def _explicit_attention(q, k, v, mask, scale, logit_softcapping, sinks):
    """Softmax attention with the variants SDPA does not cover (soft-capping, attention sinks)."""
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
