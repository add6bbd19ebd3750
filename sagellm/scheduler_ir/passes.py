"""Optimizer passes over one step's ``ExecutionPlan``.

``split_long_prefills``: fit the step's prefills into a token budget, splitting long prompts
into chunks on KV-block boundaries (the rest runs in later steps), so one long prompt no longer
stalls every decoding request for its whole prefill::

    budget 256, block 64     prefill:7 [0, 40)   prefill:9 [0, 900)
                      ->     prefill:7 [0, 40)   prefill:9 [0, 192)      remainder prefill:9@192 [192, 900)

``merge_kv_moves``: KV copies of one sequence between the same places whose token ranges
touch become one copy (one transfer instead of many small ones)::

    kv_onload:3:0-64  kv_onload:3:64-128  ->  kv_onload:3:0-128   (block ids concatenated)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sagellm.core.ir import ExecutionPlan, IRGraph, IRNode, IRNodeKind
from sagellm.core.validation import check_int
from sagellm.scheduler_ir.builder import kv_node_id, node_seq_id, prefill_node_id

_KV_KINDS = (IRNodeKind.KV_ONLOAD, IRNodeKind.KV_OFFLOAD, IRNodeKind.KV_MIGRATE)


@dataclass(frozen=True)
class SplitResult:
    """Output of ``split_long_prefills``.

    Attributes:
        plan: the step, with each kept prefill node trimmed to its chunk.
        remainders: the parts of split prefills left for later steps (not in ``plan``).
        dropped: ids of prefill nodes that did not fit this step at all (with their KV nodes).
    """

    plan: ExecutionPlan
    remainders: tuple[IRNode, ...]
    dropped: tuple[str, ...]

    def chunk_ends(self) -> dict[int, int]:
        """seq_id -> token end of its chunk, for the prefills that were split."""
        split = {node_seq_id(r.node_id) for r in self.remainders}
        return {
            node_seq_id(n.node_id): n.token_end
            for n in self.plan.graph.by_kind(IRNodeKind.PREFILL_CHUNK)
            if node_seq_id(n.node_id) in split
        }


def _aligned_end(start: int, allowed: int, block_size: int) -> int:
    """The largest block-aligned token position in (start, start + allowed], or ``start`` if none."""
    return ((start + allowed) // block_size) * block_size


def split_long_prefills(
    plan: ExecutionPlan,
    *,
    step_budget: int,
    block_size: int,
    chunk_limits: Mapping[str, int] | None = None,
    chunkable: Collection[str] | None = None,
) -> SplitResult:
    """Fit the plan's prefill nodes, in order, into ``step_budget`` tokens.

    Like LMDeploy's own admission, the first prefill is always kept; a later one that does
    not fit stops the step (it and everything after it are dropped to later steps). A
    chunkable prefill is instead cut at the last KV-block boundary that fits the budget (and
    its own ``chunk_limits`` entry); the rest becomes a remainder. Chunk ends are
    block-aligned so the computed part is made of whole blocks.

    Args:
        plan: a prefill step (``build_prefill_plan``).
        step_budget: most prefill tokens this step.
        block_size: KV block size in tokens.
        chunk_limits: prefill node id -> most tokens of that node this step.
        chunkable: prefill node ids that may be split (default: none).
    """
    check_int("split_long_prefills", "step_budget", step_budget, minimum=1)
    check_int("split_long_prefills", "block_size", block_size, minimum=1)
    limits = dict(chunk_limits or {})
    may_split = set(chunkable or ())
    kept: dict[str, IRNode] = {}
    remainders: list[IRNode] = []
    dropped: list[str] = []
    used = 0
    stopped = False
    for node in plan.graph.nodes:
        if node.kind is not IRNodeKind.PREFILL_CHUNK:
            continue
        if stopped:
            dropped.append(node.node_id)
            continue
        room = step_budget - used
        allowed = min(limits.get(node.node_id, node.num_tokens), room)
        if allowed >= node.num_tokens:
            kept[node.node_id] = node
            used += node.num_tokens
            continue
        end = _aligned_end(node.token_start, allowed, block_size) if node.node_id in may_split else node.token_start
        if end <= node.token_start and used == 0 and node.node_id in may_split:
            # the first prefill always makes progress: at least up to the next block boundary
            end = min(node.token_end, _aligned_end(node.token_start, block_size, block_size))
        if end <= node.token_start:
            if used == 0:
                kept[node.node_id] = node  # not splittable: it runs whole, as LMDeploy would
                used += node.num_tokens
            else:
                dropped.append(node.node_id)
                stopped = True
            continue
        if end >= node.token_end:
            kept[node.node_id] = node
            used += node.num_tokens
            continue
        seq_id = node_seq_id(node.node_id)
        kept[node.node_id] = _with_range(node, node.node_id, node.token_start, end)
        remainders.append(_with_range(node, prefill_node_id(seq_id, end), end, node.token_end))
        used += end - node.token_start
        if used >= step_budget:
            stopped = True
    dropped_seqs = {node_seq_id(d) for d in dropped}
    nodes = []
    for node in plan.graph.nodes:
        if node.kind is IRNodeKind.PREFILL_CHUNK:
            if node.node_id in kept:
                nodes.append(kept[node.node_id])
        elif node.kind is IRNodeKind.KV_ONLOAD and node_seq_id(node.node_id) in dropped_seqs:
            continue
        else:
            nodes.append(node)
    ids = {n.node_id for n in nodes}
    edges = tuple((a, b) for a, b in plan.graph.edges if a in ids and b in ids)
    new_plan = ExecutionPlan(
        step_id=plan.step_id,
        graph=IRGraph(nodes=tuple(nodes), edges=edges),
        token_budget=max(plan.token_budget, 1, sum(n.num_tokens for n in nodes if n.kind.is_compute)),
        metadata={**plan.metadata, "split": len(remainders), "dropped": len(dropped)},
    )
    return SplitResult(plan=new_plan, remainders=tuple(remainders), dropped=tuple(dropped))


def _with_range(node: IRNode, node_id: str, start: int, end: int) -> IRNode:
    return IRNode(
        node_id=node_id, kind=node.kind, request_id=node.request_id, token_start=start, token_end=end,
        block_ids=node.block_ids, tier=node.tier, peer=node.peer,
    )


def merge_kv_moves(plan: ExecutionPlan) -> ExecutionPlan:
    """Merge KV nodes of the same sequence, kind, tier and peer whose token ranges touch.

    The merged node takes the place of the group's first node in ``nodes``; edges to or
    from any member now attach to it (duplicates removed, edges between members dropped).
    """
    groups: dict[tuple, list[IRNode]] = {}
    for node in plan.graph.nodes:
        if node.kind in _KV_KINDS:
            key = (node.kind, node_seq_id(node.node_id), node.request_id, node.tier, node.peer)
            groups.setdefault(key, []).append(node)
    rename: dict[str, str] = {}
    merged_at: dict[str, IRNode] = {}
    for (kind, seq_id, *_), members in groups.items():
        run: list[IRNode] = []
        for node in sorted(members, key=lambda n: (n.token_start, n.token_end)) + [None]:
            if node is not None and run and node.token_start == run[-1].token_end:
                run.append(node)
                continue
            if len(run) > 1:
                first = min(run, key=lambda n: plan.graph.nodes.index(n))
                merged = IRNode(
                    node_id=kv_node_id(kind, seq_id, run[0].token_start, run[-1].token_end),
                    kind=kind,
                    request_id=run[0].request_id,
                    token_start=run[0].token_start,
                    token_end=run[-1].token_end,
                    block_ids=tuple(b for n in run for b in n.block_ids),
                    tier=run[0].tier,
                    peer=run[0].peer,
                )
                merged_at[first.node_id] = merged
                for n in run:
                    rename[n.node_id] = merged.node_id
            run = [node] if node is not None else []
    if not rename:
        return plan
    nodes = []
    for node in plan.graph.nodes:
        if node.node_id in merged_at:
            nodes.append(merged_at[node.node_id])
        elif node.node_id not in rename:
            nodes.append(node)
    edges: list[tuple[str, str]] = []
    for a, b in plan.graph.edges:
        edge = (rename.get(a, a), rename.get(b, b))
        if edge[0] != edge[1] and edge not in edges:
            edges.append(edge)
    return ExecutionPlan(
        step_id=plan.step_id,
        graph=IRGraph(nodes=tuple(nodes), edges=tuple(edges)),
        token_budget=plan.token_budget,
        metadata={**plan.metadata, "merged_kv": len(rename) - len(merged_at)},
    )
