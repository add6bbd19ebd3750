"""Build the IR of one engine step (``sagellm.core.ir``) from a snapshot and a strategy's choice.

Node ids follow one convention so passes and the engine adapter can map nodes back to
sequences::

    prefill:<seq_id>                  the prefill of a sequence this step
    prefill:<seq_id>@<token_start>    a later chunk of it (remainders of ``split_long_prefills``)
    decode:<seq_id>
    kv_onload:<seq_id>:<start>-<end>  (likewise kv_offload / kv_migrate)

KV moves of a sequence that prefills this step become edges ``kv_onload -> prefill`` (the
cached prefix must be on device first) and ``prefill -> kv_offload`` / ``prefill -> kv_migrate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sagellm.core.ir import ExecutionPlan, IRGraph, IRNode, IRNodeKind, MetadataValue
from sagellm.scheduler_ir.snapshot import EngineSnapshot, KVMoveKind, KVMoveView, SeqView

_MOVE_KINDS = {
    KVMoveKind.ONLOAD: IRNodeKind.KV_ONLOAD,
    KVMoveKind.OFFLOAD: IRNodeKind.KV_OFFLOAD,
    KVMoveKind.MIGRATE: IRNodeKind.KV_MIGRATE,
}


def prefill_node_id(seq_id: int, token_start: int | None = None) -> str:
    return f"prefill:{seq_id}" if token_start is None else f"prefill:{seq_id}@{token_start}"


def decode_node_id(seq_id: int) -> str:
    return f"decode:{seq_id}"


def kv_node_id(kind: IRNodeKind, seq_id: int, token_start: int, token_end: int) -> str:
    return f"{kind.value}:{seq_id}:{token_start}-{token_end}"


def node_seq_id(node_id: str) -> int:
    """The sequence a node id (see the module docstring) belongs to."""
    try:
        rest = node_id.split(":", 1)[1]
        return int(rest.split(":", 1)[0].split("@", 1)[0])
    except (IndexError, ValueError):
        raise ValueError(f"node id {node_id!r} does not follow '<kind>:<seq_id>[...]'") from None


def kv_move_node(move: KVMoveView, request_id: str) -> IRNode:
    kind = _MOVE_KINDS[move.kind]
    return IRNode(
        node_id=kv_node_id(kind, move.seq_id, move.token_start, move.token_end),
        kind=kind,
        request_id=request_id,
        token_start=move.token_start,
        token_end=move.token_end,
        block_ids=move.block_ids,
        tier=move.tier,
        peer=move.peer,
    )


def prefill_node(seq: SeqView) -> IRNode:
    return IRNode(
        node_id=prefill_node_id(seq.seq_id),
        kind=IRNodeKind.PREFILL_CHUNK,
        request_id=seq.request_id,
        token_start=seq.computed_tokens,
        token_end=seq.total_tokens,
    )


def decode_node(seq: SeqView) -> IRNode:
    start = seq.computed_tokens
    return IRNode(
        node_id=decode_node_id(seq.seq_id),
        kind=IRNodeKind.DECODE,
        request_id=seq.request_id,
        token_start=start,
        token_end=start + max(1, seq.pending_tokens),
    )


def _plan(
    snapshot: EngineSnapshot, nodes: list[IRNode], edges: list[tuple[str, str]], budget: int,
    metadata: Mapping[str, MetadataValue],
) -> ExecutionPlan:
    graph = IRGraph(nodes=tuple(nodes), edges=tuple(edges))
    scheduled = sum(n.num_tokens for n in nodes if n.kind.is_compute)
    return ExecutionPlan(
        step_id=snapshot.step_id, graph=graph, token_budget=max(budget, scheduled, 1), metadata=dict(metadata)
    )


def build_prefill_plan(
    snapshot: EngineSnapshot,
    order: Iterable[int],
    *,
    token_budget: int | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> ExecutionPlan:
    """A prefill step: one ``prefill_chunk`` per sequence in ``order`` (all its pending tokens),
    the KV moves of those sequences, and the offloads/migrations of every other sequence.

    Args:
        snapshot: the engine state.
        order: waiting sequence ids in admission order.
        token_budget: the step's budget (default: the snapshot's prefill budget).
        metadata: plan annotations.
    """
    order = list(order)
    scheduled = set(order)
    nodes: list[IRNode] = []
    edges: list[tuple[str, str]] = []
    for seq_id in order:
        seq = snapshot.seq(seq_id)
        node = prefill_node(seq)
        for move in snapshot.kv_moves:
            if move.seq_id == seq_id and move.kind is KVMoveKind.ONLOAD:
                kv = kv_move_node(move, seq.request_id)
                nodes.append(kv)
                edges.append((kv.node_id, node.node_id))
        nodes.append(node)
        for move in snapshot.kv_moves:
            if move.seq_id == seq_id and move.kind is not KVMoveKind.ONLOAD:
                kv = kv_move_node(move, seq.request_id)
                nodes.append(kv)
                edges.append((node.node_id, kv.node_id))
    for move in snapshot.kv_moves:
        if move.seq_id not in scheduled and move.kind is not KVMoveKind.ONLOAD:
            nodes.append(kv_move_node(move, snapshot.seq(move.seq_id).request_id))
    budget = snapshot.prefill_token_budget if token_budget is None else token_budget
    return _plan(snapshot, nodes, edges, budget, metadata or {})


def build_decode_plan(
    snapshot: EngineSnapshot, order: Iterable[int], *, metadata: Mapping[str, MetadataValue] | None = None
) -> ExecutionPlan:
    """A decode step: one ``decode`` node per running sequence in ``order``, plus pending offloads/migrations."""
    nodes = [decode_node(snapshot.seq(seq_id)) for seq_id in order]
    for move in snapshot.kv_moves:
        if move.kind is not KVMoveKind.ONLOAD:
            nodes.append(kv_move_node(move, snapshot.seq(move.seq_id).request_id))
    return _plan(snapshot, nodes, [], snapshot.max_batches, metadata or {})
