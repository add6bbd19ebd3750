"""Index arithmetic of a packed batch over paged KV, computed once per step and shared by every layer.

Sequence ``b`` owns ``q_seqlens[b]`` packed tokens starting at ``q_start_loc[b]``; after this
step it has ``kv_seqlens[b]`` tokens of history, so its new tokens sit at positions
``kv_seqlens[b] - q_seqlens[b] ... kv_seqlens[b] - 1``. With blocks of ``block_size`` slots,

    position p of sequence b  ->  flat slot block_offsets[b, p // block_size] * block_size + p % block_size

of the cache viewed as ``[num_blocks * block_size, kv_heads, dim]``.

Derived tensors (flat slots, masks) depend on the block table and the cache's block size, which
the first layer of a step supplies; they are memoized on the :class:`PackedBatch` so the other
layers reuse them (``PackedBatch.memo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PackedBatch:
    """Per-token indices of a packed batch, computed once per step and shared by every layer.

    Attributes:
        token_seq: [num_tokens] sequence index of each packed token.
        token_pos: [num_tokens] absolute position of each token in its sequence.
        token_slot: [num_tokens] index into the padded [batch * max_q_len] query grid.
        max_q_len, max_kv_len: longest new-token run and longest history (this step included).
        q_seqlens, kv_seqlens: [batch] as given to :func:`pack_batch` (None when built by hand).
        is_decode: every sequence has exactly one new token.
        no_history: every sequence starts at position 0 (a fresh prefill: nothing cached before).
        memo: derived tensors keyed by what they depend on (see :func:`history_slots`, ...).
    """

    token_seq: torch.Tensor
    token_pos: torch.Tensor
    token_slot: torch.Tensor
    max_q_len: int
    max_kv_len: int
    q_seqlens: torch.Tensor | None = None
    kv_seqlens: torch.Tensor | None = None
    is_decode: bool = False
    no_history: bool = False
    memo: dict = field(default_factory=dict, compare=False, repr=False)


def pack_batch(q_seqlens: torch.Tensor, kv_seqlens: torch.Tensor, q_start_loc: torch.Tensor) -> PackedBatch:
    """Index arithmetic for a packed batch (see module docstring)."""
    batch = q_seqlens.numel()
    num_tokens = int(q_seqlens.sum())
    device = q_seqlens.device
    max_q_len = int(q_seqlens.max()) if batch else 0
    max_kv_len = int(kv_seqlens.max()) if batch else 0
    if batch and max_q_len == 1 and num_tokens == batch:
        # decode: one token per sequence, in order; no repeat_interleave needed
        token_seq = torch.arange(batch, device=device)
        return PackedBatch(
            token_seq=token_seq,
            token_pos=(kv_seqlens - 1).long(),
            token_slot=token_seq,
            max_q_len=1,
            max_kv_len=max_kv_len,
            q_seqlens=q_seqlens,
            kv_seqlens=kv_seqlens,
            is_decode=True,
            no_history=bool((kv_seqlens == 1).all()),
        )
    token_seq = torch.repeat_interleave(torch.arange(batch, device=device), q_seqlens, output_size=num_tokens)
    token_idx = torch.arange(num_tokens, device=device) - q_start_loc[token_seq]
    history = (kv_seqlens - q_seqlens)[token_seq]
    return PackedBatch(
        token_seq=token_seq,
        token_pos=history + token_idx,
        token_slot=token_seq * max_q_len + token_idx,
        max_q_len=max_q_len,
        max_kv_len=max_kv_len,
        q_seqlens=q_seqlens,
        kv_seqlens=kv_seqlens,
        is_decode=False,
        no_history=bool(batch) and bool((kv_seqlens == q_seqlens).all()),
    )


def _memo(packed: PackedBatch, key, build):
    value = packed.memo.get(key)
    if value is None:
        value = packed.memo[key] = build()
    return value


def token_cache_slots(packed: PackedBatch, block_offsets: torch.Tensor, block_size: int) -> torch.Tensor:
    """[num_tokens] flat cache slot each new token is written to."""

    def build():
        blocks = block_offsets[packed.token_seq, packed.token_pos // block_size].long()
        return blocks * block_size + packed.token_pos % block_size

    return _memo(packed, ("token_slots", block_size), build)


def history_slots(
    packed: PackedBatch, block_offsets: torch.Tensor, kv_seqlens: torch.Tensor, block_size: int
) -> torch.Tensor:
    """[batch * max_kv_len] flat cache slot of every history position, padded positions made safe.

    Row ``b`` lists positions ``0 .. max_kv_len - 1``; positions at or past ``kv_seqlens[b]`` point
    at the sequence's position 0 instead (a slot this sequence wrote, so finite). The attention
    masks those positions out, so they add exactly nothing; what matters is that a gather never
    reads a never-written slot (uninitialized memory may hold NaN, and ``0 * NaN`` is NaN).
    """

    def build():
        batch, kv_len = kv_seqlens.numel(), packed.max_kv_len
        device = block_offsets.device
        pos = torch.arange(kv_len, device=device)
        table = block_offsets[:, : (kv_len + block_size - 1) // block_size].long()
        slots = table[:, pos // block_size] * block_size + (pos % block_size)[None, :]  # [b, L]
        valid = pos[None, :] < kv_seqlens[:, None]
        slots = torch.where(valid, slots, slots[:, :1])
        return slots.reshape(batch * kv_len)

    return _memo(packed, ("history_slots", block_size), build)


def slot_view(cache: torch.Tensor) -> torch.Tensor | None:
    """``cache`` viewed as ``[num_blocks * block_size, ...]`` slots, or None when it cannot be a view."""
    if not cache.is_contiguous():
        return None
    return cache.view(cache.size(0) * cache.size(1), *cache.shape[2:])


def read_slots(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``[len(slots), ...]``: the cache entries at flat slots (``block * block_size + offset``)."""
    flat = slot_view(cache)
    if flat is not None:
        return flat.index_select(0, slots)
    block_size = cache.size(1)
    return cache[slots // block_size, slots % block_size]


def history_valid(packed: PackedBatch, kv_seqlens: torch.Tensor) -> torch.Tensor:
    """[batch, max_kv_len] True where a history position exists (< kv_seqlens[b])."""

    def build():
        pos = torch.arange(packed.max_kv_len, device=kv_seqlens.device)
        return pos[None, :] < kv_seqlens[:, None]

    return _memo(packed, "history_valid", build)


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
    # padded query rows (and empty dummy sequences) see nothing; give them one key so softmax stays
    # finite (their rows are dropped or ignored later)
    valid_q = (q_idx < q_seqlens[:, None, None]) & mask.any(dim=-1, keepdim=True)
    mask = torch.where(valid_q, mask, k_idx == 0)
    return mask[:, None]


def attention_bias(
    packed: PackedBatch,
    q_seqlens: torch.Tensor,
    kv_seqlens: torch.Tensor,
    dtype: torch.dtype,
    causal: bool = True,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """:func:`attention_mask` as an additive ``dtype`` mask (0 / -inf), memoized per step."""
    window = sliding_window if sliding_window is not None and sliding_window > 0 else None

    def build():
        mask = attention_mask(q_seqlens, kv_seqlens, packed.max_q_len, packed.max_kv_len, causal, window)
        return additive_mask(mask, dtype)

    return _memo(packed, ("bias", dtype, causal, window), build)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as an additive ``dtype`` mask: 0 where True, -inf where False."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask, float("-inf"))
