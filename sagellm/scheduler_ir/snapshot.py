"""What a strategy sees of the engine: a typed, immutable snapshot taken at one scheduling call.

The engine adapter (``sagellm.engines.lmdeploy.scheduling``) fills it from LMDeploy's
``Scheduler``; unit tests build it by hand. All times are seconds on one clock (wall clock:
the server stamps a request's arrival, the engine process compares it with ``now_s``).

Token arithmetic of one sequence (one request turn)::

    |<-------- computed_tokens -------->|<---- pending_tokens ---->|
    [ prompt (and generated) tokens whose KV exists | to be forwarded ]
                      generated_tokens: tokens sampled so far (0 until the first token)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from sagellm.core.kv import KVTier
from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import (
    check_float,
    check_int,
    check_str,
    coerce_enum,
    coerce_tuple,
    invalid,
)


class SeqState(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SeqView(SerializableMixin):
    """One sequence as a strategy sees it.

    Attributes:
        seq_id: the engine's id; unique among the snapshot's sequences; decisions name it.
        request_id: the request's id (from ``x-request-id`` or generated), for plans and traces.
        state: waiting (not yet prefilled, or preempted) or running (decoding, possibly in flight).
        arrival_s: when the request arrived.
        computed_tokens: tokens whose KV is in the cache (prefix hits, earlier chunks).
        pending_tokens: tokens the next forward of this sequence must process (>= 1 when waiting).
        generated_tokens: tokens sampled so far for this request.
        max_new_tokens: the request's output limit.
        first_token_s: when its first token was produced; None before that.
        num_blocks: KV blocks it holds.
        priority: lower is served first (vLLM's convention); 0 by default.
        tenant: who the request belongs to; None = anonymous.
        slo_ttft_ms / slo_tpot_ms: latency targets; None = none.
        chunkable: whether its prefill may be split across steps (plain text, no logits output).
        in_flight: a running sequence whose current step has not returned yet.
    """

    seq_id: int
    request_id: str
    state: SeqState
    arrival_s: float
    computed_tokens: int = 0
    pending_tokens: int = 1
    generated_tokens: int = 0
    max_new_tokens: int = 1
    first_token_s: float | None = None
    num_blocks: int = 0
    priority: int = 0
    tenant: str | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    chunkable: bool = True
    in_flight: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "seq_id", self.seq_id, minimum=0)
        check_str(owner, "request_id", self.request_id)
        object.__setattr__(self, "state", coerce_enum(owner, "state", self.state, SeqState))
        check_float(owner, "arrival_s", self.arrival_s, minimum=0.0)
        check_int(owner, "computed_tokens", self.computed_tokens, minimum=0)
        check_int(owner, "pending_tokens", self.pending_tokens, minimum=0)
        if self.state is SeqState.WAITING and self.pending_tokens < 1:
            raise invalid(owner, "pending_tokens", self.pending_tokens, "an integer >= 1 for a waiting sequence")
        check_int(owner, "generated_tokens", self.generated_tokens, minimum=0)
        check_int(owner, "max_new_tokens", self.max_new_tokens, minimum=0)
        if self.first_token_s is not None:
            check_float(owner, "first_token_s", self.first_token_s, minimum=0.0)
        check_int(owner, "num_blocks", self.num_blocks, minimum=0)
        check_int(owner, "priority", self.priority)
        if self.tenant is not None:
            check_str(owner, "tenant", self.tenant)
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            value = getattr(self, name)
            if value is not None:
                check_float(owner, name, value, positive=True)
                object.__setattr__(self, name, float(value))
        if not isinstance(self.chunkable, bool):
            raise invalid(owner, "chunkable", self.chunkable, "a boolean")
        if not isinstance(self.in_flight, bool):
            raise invalid(owner, "in_flight", self.in_flight, "a boolean")
        if self.in_flight and self.state is not SeqState.RUNNING:
            raise invalid(owner, "in_flight", self.in_flight, "False for a waiting sequence")

    @property
    def total_tokens(self) -> int:
        """Tokens of the sequence so far (computed + pending)."""
        return self.computed_tokens + self.pending_tokens

    @property
    def tokens_left(self) -> int:
        """Output tokens still to come before ``max_new_tokens``."""
        return max(0, self.max_new_tokens - self.generated_tokens)

    def waited_s(self, now_s: float) -> float:
        return max(0.0, now_s - self.arrival_s)


@dataclass(frozen=True)
class CostEstimate(SerializableMixin):
    """How long steps take, in milliseconds (``sagellm.scheduler_ir.cost.StepCostModel`` learns it).

    ``prefill_ms(n) = prefill_fixed_ms + prefill_ms_per_token * n`` for a prefill step of n tokens;
    ``decode_loop_ms(b) = decode_fixed_ms + decode_ms_per_seq * b`` per decoded token of a batch of b.
    With the batch's KV history known, ``decode_loop_ms(b, kv)`` splits the per-sequence cost into a
    part per sequence and ``decode_ms_per_kv_token`` per history token (attention reads every one):
    the line is that plane at ``decode_mean_kv_per_seq``, the mean history of the loops it was fitted
    on (both 0 while the model cannot tell the two apart).
    ``decode_floor_ms``: the fastest decode loops seen recently (a low percentile, 0 = none seen yet);
    a TPOT target below it cannot be met at any batch size.
    ``prefill_floor_ms_per_token``: the lowest time per token of the recent prefill steps (0 = none
    seen yet); no prompt of n tokens gets its first token sooner than n times it.
    """

    prefill_fixed_ms: float = 5.0
    prefill_ms_per_token: float = 0.1
    decode_fixed_ms: float = 5.0
    decode_ms_per_seq: float = 0.2
    decode_floor_ms: float = 0.0
    prefill_floor_ms_per_token: float = 0.0
    decode_ms_per_kv_token: float = 0.0
    decode_mean_kv_per_seq: float = 0.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("prefill_fixed_ms", "prefill_ms_per_token", "decode_fixed_ms", "decode_ms_per_seq",
                     "decode_floor_ms", "prefill_floor_ms_per_token", "decode_ms_per_kv_token",
                     "decode_mean_kv_per_seq"):
            check_float(owner, name, getattr(self, name), minimum=0.0)
            object.__setattr__(self, name, float(getattr(self, name)))

    def prefill_ms(self, tokens: int) -> float:
        return self.prefill_fixed_ms + self.prefill_ms_per_token * max(0, tokens)

    def decode_loop_ms(self, batch: int, kv_tokens: int | None = None) -> float:
        """One decode loop of ``batch`` sequences holding ``kv_tokens`` history tokens in all (None: typical)."""
        batch = max(1, batch)
        if kv_tokens is None:
            return self.decode_fixed_ms + self.decode_ms_per_seq * batch
        per_kv = self.decode_ms_per_kv_token
        per_seq = max(0.0, self.decode_ms_per_seq - per_kv * self.decode_mean_kv_per_seq)
        return self.decode_fixed_ms + per_seq * batch + per_kv * max(0, kv_tokens)


class KVMoveKind(str, Enum):
    ONLOAD = "kv_onload"
    OFFLOAD = "kv_offload"
    MIGRATE = "kv_migrate"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class KVMoveView(SerializableMixin):
    """A KV copy the engine has pending for a sequence (from a tier, to a tier, or to a peer engine).

    Attributes:
        kind: onload (tier -> device), offload (device -> tier) or migrate (device -> peer).
        seq_id: the sequence whose KV moves.
        token_start / token_end: the token range ``[start, end)`` the blocks hold.
        block_ids: device block ids read or written.
        tier: the non-device tier (``host``/``ssd``/``remote``); for a migration, the tier on the peer.
        peer: migrations only: the engine the KV goes to.
    """

    kind: KVMoveKind
    seq_id: int
    token_start: int
    token_end: int
    block_ids: tuple[int, ...]
    tier: KVTier = KVTier.HOST
    peer: str = ""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "kind", coerce_enum(owner, "kind", self.kind, KVMoveKind))
        check_int(owner, "seq_id", self.seq_id, minimum=0)
        check_int(owner, "token_start", self.token_start, minimum=0)
        check_int(owner, "token_end", self.token_end, minimum=self.token_start + 1)
        object.__setattr__(self, "block_ids", coerce_tuple(owner, "block_ids", self.block_ids, int, "integers >= 0"))
        object.__setattr__(self, "tier", coerce_enum(owner, "tier", self.tier, KVTier))
        check_str(owner, "peer", self.peer, allow_empty=True)


@dataclass(frozen=True)
class EngineSnapshot(SerializableMixin):
    """The engine at one scheduling call.

    Attributes:
        now_s: the time of the call.
        step_id: a counter of scheduling calls (>= 0).
        waiting: waiting sequences in the engine's own order (first come, first served).
        running: running sequences (in flight or not) in the engine's own order.
        free_blocks / total_blocks / block_size: the device KV cache.
        max_batches: most sequences one step may hold.
        prefill_token_budget: the engine's token budget of one prefill step.
        decode_loops: decode tokens produced per decode step (LMDeploy's ``prefill_interval``).
        cost: step-time estimate.
        inflight_ms: estimated time until the step in flight returns (0 when idle).
        kv_moves: KV copies the engine has pending.
    """

    now_s: float
    step_id: int = 0
    waiting: tuple[SeqView, ...] = ()
    running: tuple[SeqView, ...] = ()
    free_blocks: int = 0
    total_blocks: int = 0
    block_size: int = 16
    max_batches: int = 128
    prefill_token_budget: int = 4096
    decode_loops: int = 16
    cost: CostEstimate = field(default_factory=CostEstimate)
    inflight_ms: float = 0.0
    kv_moves: tuple[KVMoveView, ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_float(owner, "now_s", self.now_s, minimum=0.0)
        check_int(owner, "step_id", self.step_id, minimum=0)
        waiting = coerce_tuple(owner, "waiting", self.waiting, SeqView, "SeqView")
        running = coerce_tuple(owner, "running", self.running, SeqView, "SeqView")
        for name, seqs, state in (("waiting", waiting, SeqState.WAITING), ("running", running, SeqState.RUNNING)):
            wrong = [s.seq_id for s in seqs if s.state is not state]
            if wrong:
                raise invalid(owner, name, wrong, f"sequences in state {state.value!r} only")
        ids = [s.seq_id for s in waiting + running]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise invalid(owner, "waiting/running", dupes, "unique seq ids")
        object.__setattr__(self, "waiting", waiting)
        object.__setattr__(self, "running", running)
        check_int(owner, "free_blocks", self.free_blocks, minimum=0)
        check_int(owner, "total_blocks", self.total_blocks, minimum=0)
        check_int(owner, "block_size", self.block_size, minimum=1)
        check_int(owner, "max_batches", self.max_batches, minimum=1)
        check_int(owner, "prefill_token_budget", self.prefill_token_budget, minimum=1)
        check_int(owner, "decode_loops", self.decode_loops, minimum=1)
        if not isinstance(self.cost, CostEstimate):
            raise invalid(owner, "cost", self.cost, "a CostEstimate")
        check_float(owner, "inflight_ms", self.inflight_ms, minimum=0.0)
        moves = coerce_tuple(owner, "kv_moves", self.kv_moves, KVMoveView, "KVMoveView")
        unknown = sorted({m.seq_id for m in moves} - set(ids))
        if unknown:
            raise invalid(owner, "kv_moves", unknown, "moves of sequences in the snapshot")
        object.__setattr__(self, "kv_moves", moves)

    def seq(self, seq_id: int) -> SeqView:
        for s in self.waiting + self.running:
            if s.seq_id == seq_id:
                return s
        raise KeyError(f"no sequence {seq_id}; sequences: {[s.seq_id for s in self.waiting + self.running]}")

    @property
    def tenants(self) -> tuple[str, ...]:
        """Tenants present, sorted ('' stands for anonymous)."""
        return tuple(sorted({s.tenant or "" for s in self.waiting + self.running}))

    def ids(self, seqs: Iterable[SeqView]) -> tuple[int, ...]:
        return tuple(s.seq_id for s in seqs)
