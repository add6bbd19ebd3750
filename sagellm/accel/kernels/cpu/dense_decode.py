"""A dense copy of a decode batch's KV history, carried across consecutive decode steps.

Paged attention has to gather every sequence's history out of its blocks before it can attend:
at decode time that is a full read + write of the batch's KV per layer per step, for one new
token per sequence. On CPU the gather costs about as much as the attention itself.

:class:`DenseDecodeKV` keeps, per layer, the gathered history of the current decode batch in a
dense ``[batch, kv_heads, capacity, dim]`` tensor. While the engine keeps decoding the same batch
(same block table prefix, every history one token longer than at the previous step), a layer only
appends its new token; anything else (a prefill step, another batch, a block table change, a
history that outgrows the capacity, a different dtype) rebuilds it with one gather. The copy is
bitwise the cache's content (same values, same dtype conversion), so attention results are
identical to the gather path.

Step planning (:meth:`DenseDecodeKV.plan`) runs once per forward, layers call
:meth:`DenseDecodeKV.layer_history`. Memory is bounded by ``budget_bytes`` (all layers of K and V
together); over budget, the plan is ``off`` and attention gathers as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from sagellm.accel.kernels.cpu.packed_batch import PackedBatch, history_slots


class DensePlan(str, Enum):
    """What the layers of one forward do with their dense history."""

    OFF = "off"  # gather from the paged cache as usual
    REBUILD = "rebuild"  # gather once into a fresh dense copy
    APPEND = "append"  # the copy is current up to the previous token: append this step's token


#: Extra positions a rebuilt copy reserves, so that the next decode steps only append.
DEFAULT_HEADROOM = 64


@dataclass
class _LayerCopy:
    keys: torch.Tensor  # [batch, kv_heads, capacity, dim]
    values: torch.Tensor  # [batch, kv_heads, capacity, v_dim]
    step: int  # the plan step whose tokens it holds


@dataclass
class DenseDecodeKV:
    """Dense decode-batch KV copies of one engine's layers (see module docstring).

    Attributes:
        budget_bytes: upper bound on the memory of all copies (K and V of every layer).
        headroom: positions reserved past the longest history on rebuild.
    """

    budget_bytes: int
    headroom: int = DEFAULT_HEADROOM
    _table: torch.Tensor | None = field(default=None, repr=False)
    _kv_seqlens: torch.Tensor | None = field(default=None, repr=False)
    _capacity: int = 0
    _step: int = 0
    _layers: dict = field(default_factory=dict, repr=False)
    stats: dict = field(default_factory=lambda: {"rebuild": 0, "append": 0, "off": 0})

    def reset(self) -> None:
        """Forget every copy (the next decode step rebuilds)."""
        self._table = None
        self._kv_seqlens = None
        self._capacity = 0
        self._layers.clear()

    def plan(
        self,
        packed: PackedBatch,
        block_offsets: torch.Tensor,
        kv_seqlens: torch.Tensor,
        block_size: int,
        bytes_per_position: int,
    ) -> DensePlan:
        """Decide, once per forward, whether the layers append, rebuild, or gather as usual.

        Args:
            packed: this step's packed batch.
            block_offsets, kv_seqlens: this step's block table and history lengths.
            block_size: slots per cache block.
            bytes_per_position: bytes one history position takes in all layers' K and V copies.
        """
        self._step += 1
        plan = self._plan(packed, block_offsets, kv_seqlens, block_size, bytes_per_position)
        self.stats[plan.value] += 1
        if plan is DensePlan.OFF:
            self.reset()
        else:
            self._table = block_offsets.clone()
            self._kv_seqlens = kv_seqlens.clone()
        return plan

    def _plan(self, packed, block_offsets, kv_seqlens, block_size, bytes_per_position) -> DensePlan:
        if not packed.is_decode or self.budget_bytes <= 0:
            return DensePlan.OFF
        batch = kv_seqlens.numel()
        if self._continues(block_offsets, kv_seqlens, block_size) and packed.max_kv_len <= self._capacity:
            return DensePlan.APPEND
        capacity = packed.max_kv_len + self.headroom
        if batch * capacity * bytes_per_position > self.budget_bytes:
            capacity = packed.max_kv_len
            if batch * capacity * bytes_per_position > self.budget_bytes:
                return DensePlan.OFF
        self._layers.clear()
        self._capacity = capacity
        return DensePlan.REBUILD

    def _continues(self, block_offsets: torch.Tensor, kv_seqlens: torch.Tensor, block_size: int) -> bool:
        """Same batch, one token further, and the blocks holding the previous history unchanged."""
        prev_table, prev_kv = self._table, self._kv_seqlens
        if prev_table is None or prev_kv.shape != kv_seqlens.shape or block_offsets.size(0) != prev_table.size(0):
            return False
        if not bool(torch.equal(kv_seqlens, prev_kv + 1)):
            return False
        used = (prev_kv.max().item() + block_size - 1) // block_size  # blocks that held the previous history
        if block_offsets.size(1) < used or prev_table.size(1) < used:
            return False
        cols = torch.arange(used, device=block_offsets.device)
        held = cols[None, :] * block_size < prev_kv[:, None]  # [b, used] block j held history of seq b
        return bool(torch.equal(block_offsets[:, :used][held], prev_table[:, :used][held]))

    def layer_history(
        self,
        plan: DensePlan,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        block_offsets: torch.Tensor,
        kv_seqlens: torch.Tensor,
        packed: PackedBatch,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's ``[batch, kv_heads, max_kv_len, dim]`` K and V views (the cache already holds ``key``/``value``).

        ``plan`` must be ``REBUILD`` or ``APPEND`` (from this step's :meth:`plan`).
        """
        layer = k_cache.data_ptr()
        copy = self._layers.get(layer)
        if plan is DensePlan.APPEND and copy is not None and copy.step == self._step - 1 and copy.keys.dtype == dtype:
            pos = (kv_seqlens - 1).long()
            rows = torch.arange(kv_seqlens.numel(), device=pos.device)
            # the token the cache just received, converted exactly as the gather path converts it
            copy.keys[rows, :, pos] = key.to(k_cache.dtype).to(dtype)
            copy.values[rows, :, pos] = value.to(v_cache.dtype).to(dtype)
            copy.step = self._step
        else:
            copy = self._rebuild_layer(k_cache, v_cache, block_offsets, kv_seqlens, packed, dtype)
            self._layers[layer] = copy
        length = packed.max_kv_len
        return copy.keys[:, :, :length], copy.values[:, :, :length]

    def _rebuild_layer(self, k_cache, v_cache, block_offsets, kv_seqlens, packed, dtype) -> _LayerCopy:
        batch, block_size = kv_seqlens.numel(), k_cache.size(1)
        slots = history_slots(packed, block_offsets, kv_seqlens, block_size)
        tensors = []
        for cache in (k_cache, v_cache):
            heads, dim = cache.shape[2], cache.shape[3]
            # zeros: positions past a sequence's history must be finite (they are masked out)
            dense = torch.zeros(batch, heads, max(self._capacity, packed.max_kv_len), dim, dtype=dtype,
                                device=cache.device)
            flat = cache.reshape(-1, heads, dim) if cache.is_contiguous() else None
            rows = flat.index_select(0, slots) if flat is not None else cache[slots // block_size, slots % block_size]
            dense[:, :, : packed.max_kv_len] = rows.view(batch, packed.max_kv_len, heads, dim).transpose(1, 2)
            tensors.append(dense)
        return _LayerCopy(*tensors, step=self._step)
