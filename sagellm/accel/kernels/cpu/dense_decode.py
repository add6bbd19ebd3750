"""A dense copy of a decode batch's KV history, carried across consecutive decode steps.

Paged attention has to gather every sequence's history out of its blocks before it can attend:
at decode time that is a full read + write of the batch's KV per layer per step, for one new
token per sequence. On CPU the gather costs about as much as the attention itself.

:class:`DenseDecodeKV` keeps, per layer, the gathered history of the current decode batch in a
dense ``[batch, kv_heads, capacity, dim]`` tensor. While the engine keeps decoding the same batch
(same block table prefix, every history one token longer than at the previous step), a layer only
appends its new token; anything else (a prefill step, another batch, a block table change, a
history that outgrows the capacity, a different dtype) rebuilds it: rows the copies already hold
for the same sequences are carried over and the rest gathered (:meth:`DenseDecodeKV._carry_rows`;
in closed-loop chat at concurrency 32 every finished request brings a prefill step and so a
rebuild, and full rebuilds were 17% of the engine's time). The copy is
bitwise the cache's content (same values, same dtype conversion), so attention results are
identical to the gather path.

Rows are kept longest history first, cut into a few buckets of similar length
(:func:`length_buckets`), and attention runs once per bucket over that bucket's longest history
only. Padding every row to the batch's longest history made decode attention read several times
the KV that exists: chat traffic mixes 100-token and 1500-token histories in one batch (measured
on such a batch of 26 sequences: 0.84 -> 0.46 ms per layer).

Step planning (:meth:`DenseDecodeKV.plan`) runs once per forward, layers call
:meth:`DenseDecodeKV.layer_history`. Memory is bounded by ``budget_bytes`` (all layers of K and V
together); over budget, the plan is ``off`` and attention gathers as usual.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import torch

from sagellm.accel.kernels.cpu.packed_batch import PackedBatch, history_slots, read_slots


class DensePlan(str, Enum):
    """What the layers of one forward do with their dense history."""

    OFF = "off"  # gather from the paged cache as usual
    REBUILD = "rebuild"  # gather once into a fresh dense copy
    APPEND = "append"  # the copy is current up to the previous token: append this step's token


#: Extra positions a rebuilt copy reserves, so that the next decode steps only append.
DEFAULT_HEADROOM = 64

#: What one more attention call per layer costs, in history positions of one row (about 30 us
#: against about 50 ns per position at 2 KV heads x 64 dims on the 2-core reference machine).
BUCKET_CALL_POSITIONS = 512

#: Most attention calls per layer a decode step makes.
MAX_BUCKETS = 4


def length_buckets(lengths: list[int], call_positions: int = BUCKET_CALL_POSITIONS,
                   max_buckets: int = MAX_BUCKETS) -> list[tuple[int, int]]:
    """Cut rows sorted longest first into ``[start, end)`` runs minimising padded positions + calls.

    A run costs ``(end - start) * lengths[start]`` positions (every row padded to the run's first,
    longest, row) plus ``call_positions`` for its attention call; at most ``max_buckets`` runs.
    """
    n = len(lengths)
    if n == 0:
        return []
    inf = float("inf")
    # best[k][j]: cheapest cover of rows [0, j) with k runs
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                cost = best[k - 1][i] + (j - i) * lengths[i] + call_positions
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    runs, k, j = [], min(range(1, max_buckets + 1), key=lambda k: best[k][n]), n
    while j > 0:
        i = cut[k][j]
        runs.append((i, j))
        j, k = i, k - 1
    return runs[::-1]


@dataclass(frozen=True)
class RowLayout:
    """How one decode step's dense rows are ordered and bucketed (shared by every layer).

    Attributes:
        order: [batch] batch index of each row (longest history first); ``inverse``: row of each
            batch index; ``in_batch_order``: the rows are already in batch order.
        buckets: ``(start, end, length)`` row runs; rows ``start..end-1`` attend over positions
            ``0..length-1`` (``length``: the run's longest history this step).
        kv_seqlens: [batch] history lengths in row order.
    """

    order: torch.Tensor
    inverse: torch.Tensor
    in_batch_order: bool
    buckets: tuple[tuple[int, int, int], ...]
    kv_seqlens: torch.Tensor


@dataclass
class DenseHistory:
    """One layer's dense decode history: ``keys``/``values`` ``[batch, kv_heads, capacity, dim]``,
    row ``r`` holding sequence ``layout.order[r]``."""

    keys: torch.Tensor
    values: torch.Tensor
    layout: RowLayout

    def batch_order(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V as ``[batch, kv_heads, length, dim]`` in batch order (a copy unless rows already are)."""
        keys, values = self.keys[:, :, :length], self.values[:, :, :length]
        if self.layout.in_batch_order:
            return keys, values
        return keys.index_select(0, self.layout.inverse), values.index_select(0, self.layout.inverse)


@dataclass(frozen=True)
class _HeldRows:
    """What the layer copies of decode step ``step`` hold: row ``r`` the history ``[0, kv_seqlens[r])``
    of the sequence whose blocks are ``table[r]``."""

    table: torch.Tensor
    kv_seqlens: torch.Tensor
    step: int


@dataclass(frozen=True)
class _Carry:
    """A rebuild that copies ``old_rows`` of the step-``step`` copies into ``new_rows`` (positions
    below ``copied``) and gathers ``gather_slots`` into (``gather_rows``, ``gather_positions``)."""

    step: int
    new_rows: torch.Tensor
    old_rows: torch.Tensor
    copied: int
    gather_rows: torch.Tensor
    gather_positions: torch.Tensor
    gather_slots: torch.Tensor


@dataclass
class _LayerCopy:
    keys: torch.Tensor  # [batch, kv_heads, capacity, dim], rows longest history first
    values: torch.Tensor  # [batch, kv_heads, capacity, v_dim]
    step: int  # the plan step whose tokens it holds


@dataclass
class DenseDecodeKV:
    """Dense decode-batch KV copies of one engine's layers (see module docstring).

    Attributes:
        budget_bytes: upper bound on the memory of all copies (K and V of every layer).
        headroom: positions reserved past the longest history on rebuild.
        bucket_call_positions: cost of one more attention call, for :func:`length_buckets`.
    """

    budget_bytes: int
    headroom: int = DEFAULT_HEADROOM
    bucket_call_positions: int = BUCKET_CALL_POSITIONS
    _table: torch.Tensor | None = field(default=None, repr=False)
    _kv_seqlens: torch.Tensor | None = field(default=None, repr=False)
    _capacity: int = 0
    _step: int = 0
    _order: torch.Tensor | None = field(default=None, repr=False)
    _inverse: torch.Tensor | None = field(default=None, repr=False)
    _in_batch_order: bool = False
    _runs: list = field(default_factory=list, repr=False)  # (start, end, longest history at rebuild)
    _rebuild_step: int = 0
    _layout: RowLayout | None = field(default=None, repr=False)  # this step's, set by plan()
    _layers: dict = field(default_factory=dict, repr=False)
    _spares: dict = field(default_factory=dict, repr=False)  # layer -> a former copy whose memory is free
    _step_of_table: int = 0
    _held: _HeldRows | None = field(default=None, repr=False)
    _carry: _Carry | None = field(default=None, repr=False)
    stats: dict = field(default_factory=lambda: {"rebuild": 0, "append": 0, "off": 0, "carried_rows": 0})

    def reset(self) -> None:
        """Forget every copy (the next decode step rebuilds).

        The copies' memory stays with their layers, for the next rebuild to write into: a fresh
        allocation of this size is a fresh mapping whose page faults measured 1.5-2x the cost of
        the rebuild itself (32 rows x ~400 positions, 4 layers: 9-13 ms reused vs 15-24 ms).
        """
        self._remember_rows()
        self._table = None
        self._kv_seqlens = None
        self._capacity = 0
        self._layout = None

    def _remember_rows(self) -> None:
        """Note which history each copy row holds, for a later rebuild to carry rows over."""
        if self._table is not None:
            self._held = _HeldRows(table=self._table.index_select(0, self._order),
                                   kv_seqlens=self._kv_seqlens.index_select(0, self._order), step=self._step_of_table)

    def plan(
        self,
        packed: PackedBatch,
        block_offsets: torch.Tensor,
        kv_seqlens: torch.Tensor,
        block_size: int,
        bytes_per_position: int,
        last_k_cache: torch.Tensor | None = None,
    ) -> DensePlan:
        """Decide, once per forward, whether the layers append, rebuild, or gather as usual.

        Args:
            packed: this step's packed batch.
            block_offsets, kv_seqlens: this step's block table and history lengths.
            block_size: slots per cache block.
            bytes_per_position: bytes one history position takes in all layers' K and V copies.
            last_k_cache: the last layer's K cache; given, a rebuild carries over the rows of
                sequences the copies already hold (see :meth:`_carry_rows`).
        """
        self._step += 1
        self._carry = None
        plan = self._plan(packed, block_offsets, kv_seqlens, block_size, bytes_per_position)
        if plan is DensePlan.REBUILD and last_k_cache is not None:
            self._carry = self._carry_rows(packed, block_offsets, kv_seqlens, block_size, bytes_per_position,
                                           last_k_cache)
        self.stats[plan.value] += 1
        if self._carry is not None:
            self.stats["carried_rows"] += int(self._carry.new_rows.numel())
        if plan is DensePlan.OFF:
            self.reset()
        else:
            self._table = block_offsets.clone()
            self._kv_seqlens = kv_seqlens.clone()
            self._step_of_table = self._step
            grown = self._step - self._rebuild_step  # every history is one token longer per step
            self._layout = RowLayout(
                order=self._order,
                inverse=self._inverse,
                in_batch_order=self._in_batch_order,
                buckets=tuple((start, end, length + grown) for start, end, length in self._runs),
                kv_seqlens=kv_seqlens.index_select(0, self._order),
            )
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
        self._remember_rows()  # the batch changed between two decode steps
        self._capacity = capacity
        self._lay_out_rows(kv_seqlens)
        return DensePlan.REBUILD

    def _lay_out_rows(self, kv_seqlens: torch.Tensor) -> None:
        """Rows longest history first (stable), cut into buckets of similar length."""
        order = torch.sort(kv_seqlens, descending=True, stable=True).indices
        self._order = order
        self._inverse = torch.empty_like(order)
        rows = torch.arange(order.numel(), device=order.device)
        self._inverse[order] = rows
        self._in_batch_order = bool(torch.equal(order, rows))
        lengths = kv_seqlens.index_select(0, order).tolist()
        self._runs = [(start, end, lengths[start]) for start, end in length_buckets(lengths, self.bucket_call_positions)]
        self._rebuild_step = self._step

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
    ) -> DenseHistory:
        """This layer's dense K and V, rows longest first (the cache already holds ``key``/``value``).

        ``plan`` must be ``REBUILD`` or ``APPEND`` (from this step's :meth:`plan`).
        """
        layer = k_cache.data_ptr()
        copy = self._layers.get(layer)
        if plan is DensePlan.APPEND and copy is not None and copy.step == self._step - 1 and copy.keys.dtype == dtype:
            pos = (kv_seqlens - 1).long()
            # the token the cache just received, converted exactly as the gather path converts it
            copy.keys[self._inverse, :, pos] = key.to(k_cache.dtype).to(dtype)
            copy.values[self._inverse, :, pos] = value.to(v_cache.dtype).to(dtype)
            copy.step = self._step
        elif (self._carry is not None and copy is not None and copy.step == self._carry.step
              and copy.keys.dtype == dtype):
            spare = self._spares.get(layer)
            self._layers[layer] = self._carry_layer(copy, spare, k_cache, v_cache, packed, dtype)
            self._spares[layer] = copy
            copy = self._layers[layer]
        else:
            copy = self._rebuild_layer(k_cache, v_cache, block_offsets, kv_seqlens, packed, dtype, reuse=copy)
            self._layers[layer] = copy
        return DenseHistory(keys=copy.keys, values=copy.values, layout=self._layout)

    def _carry_rows(self, packed, block_offsets, kv_seqlens, block_size, bytes_per_position,
                    last_k_cache) -> _Carry | None:
        """Match this batch's rows to copy rows that already hold the start of their history.

        A copy row of history length ``n`` serves a new row when the new row's block table starts
        with the same ``ceil(n / block_size)`` blocks, its history is longer than ``n``, and the last
        layer's key at position ``n - 1`` in the cache equals the copy's. Block ids alone do not
        identify a sequence (a finished sequence's blocks go to the next one); the key check does:
        the last layer's key at a position depends on every token before it, so a block rewritten
        by another sequence shows there. Rows carried over are copied, the rest gathered.
        """
        held = self._held
        last_copy = self._layers.get(last_k_cache.data_ptr())
        if (held is None or last_copy is None or last_copy.step != held.step
                or 2 * kv_seqlens.numel() * self._capacity * bytes_per_position > self.budget_bytes):
            return None  # the spare copy must fit the budget beside the current one
        table = block_offsets.index_select(0, self._order)
        lengths = kv_seqlens.index_select(0, self._order).tolist()
        held_lengths = held.kv_seqlens.tolist()
        held_table = held.table.tolist()
        by_blocks: dict[tuple, list[int]] = {}
        for row, length in enumerate(held_lengths):
            used = (length + block_size - 1) // block_size
            if length > 0 and used <= len(held_table[row]):
                by_blocks.setdefault(tuple(held_table[row][:used]), []).append(row)
        used_counts = sorted({len(key) for key in by_blocks})
        new_table = table.tolist()
        pairs = []
        for row, length in enumerate(lengths):
            for used in used_counts:
                rows = by_blocks.get(tuple(new_table[row][:used])) if used <= len(new_table[row]) else None
                match = next((r for r in rows or () if held_lengths[r] < length), None)
                if match is not None:
                    pairs.append((row, match))
                    by_blocks[tuple(new_table[row][:used])] = [r for r in rows if r != match]
                    break
        if not pairs:
            return None
        new_rows = torch.tensor([p[0] for p in pairs])
        old_rows = torch.tensor([p[1] for p in pairs])
        held_length = held.kv_seqlens.index_select(0, old_rows).long()
        last = held_length - 1
        slots = table.index_select(0, new_rows).long().gather(1, (last // block_size)[:, None])[:, 0] * block_size
        slots += last % block_size
        cached = read_slots(last_k_cache, slots).to(last_copy.keys.dtype)
        same = (cached == last_copy.keys[old_rows, :, last]).flatten(1).all(1)
        if not bool(same.any()):
            return None
        new_rows, old_rows = new_rows[same], old_rows[same]
        starts = torch.zeros(len(lengths), dtype=torch.long)
        starts[new_rows] = held_length[same]
        length = packed.max_kv_len
        need = torch.arange(length)[None, :] >= starts[:, None]  # [rows, length] positions still to gather
        slot_grid = history_slots(packed, block_offsets, kv_seqlens, block_size).view(-1, length)
        gather_rows, gather_positions = need.nonzero(as_tuple=True)
        return _Carry(step=held.step, new_rows=new_rows, old_rows=old_rows, copied=int(starts.max()),
                      gather_rows=gather_rows, gather_positions=gather_positions,
                      gather_slots=slot_grid.index_select(0, self._order)[need])

    def _carry_layer(self, old: _LayerCopy, spare: _LayerCopy | None, k_cache, v_cache, packed, dtype) -> _LayerCopy:
        """This layer's copy from ``old``'s carried rows plus a gather of everything else."""
        carry = self._carry
        batch, length = self._order.numel(), packed.max_kv_len
        spares = (spare.keys, spare.values) if spare is not None else (None, None)
        tensors = []
        for cache, held, memory in zip((k_cache, v_cache), (old.keys, old.values), spares):
            heads, dim = cache.shape[2], cache.shape[3]
            dense = _buffer(memory, (batch, heads, max(self._capacity, length), dim), dtype, cache.device)
            dense[:, :, length:].zero_()
            dense[:, :, : carry.copied].index_copy_(0, carry.new_rows,
                                                     held[:, :, : carry.copied].index_select(0, carry.old_rows))
            dense[carry.gather_rows, :, carry.gather_positions] = read_slots(cache, carry.gather_slots).to(dtype)
            tensors.append(dense)
        return _LayerCopy(*tensors, step=self._step)

    def _rebuild_layer(self, k_cache, v_cache, block_offsets, kv_seqlens, packed, dtype,
                       reuse: _LayerCopy | None = None) -> _LayerCopy:
        """Gather the layer's history into dense rows (longest first), in ``reuse``'s memory when it fits."""
        batch, block_size = kv_seqlens.numel(), k_cache.size(1)
        length = packed.max_kv_len
        capacity = max(self._capacity, length)
        slots = history_slots(packed, block_offsets, kv_seqlens, block_size)
        slots = slots.view(batch, length).index_select(0, self._order).view(-1)  # rows longest first
        previous = (reuse.keys, reuse.values) if reuse is not None else (None, None)
        tensors = []
        for cache, old in zip((k_cache, v_cache), previous):
            heads, dim = cache.shape[2], cache.shape[3]
            dense = _buffer(old, (batch, heads, capacity, dim), dtype, cache.device)
            # positions past the longest history must be finite (they are masked out, and 0 * NaN is
            # NaN); the gather writes every position before it (padding reads the row's position 0)
            dense[:, :, length:].zero_()
            dense[:, :, :length] = read_slots(cache, slots).view(batch, length, heads, dim).transpose(1, 2)
            tensors.append(dense)
        return _LayerCopy(*tensors, step=self._step)


def _buffer(previous: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` over ``previous``'s storage when it is large enough, else a new one."""
    if (previous is not None and previous.dtype == dtype and previous.device == device
            and previous.untyped_storage().nbytes() >= math.prod(shape) * previous.element_size()):
        return previous.new_empty(0).set_(previous.untyped_storage(), 0, shape)
    return torch.empty(shape, dtype=dtype, device=device)
