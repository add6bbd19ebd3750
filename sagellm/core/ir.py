"""Scheduler IR: what one engine step does, as a small dependency graph.

An ``ExecutionPlan`` is one step: an ``IRGraph`` of ``IRNode``s (prefill chunks,
decodes, and KV moves between tiers or engines) plus the step's token budget.
Edges say "run A before B", e.g. onload a request's cached prefix before its
prefill chunk::

    kv_onload(req-1, tokens 0..64, host) ──▶ prefill_chunk(req-1, tokens 64..128)
    decode(req-2, token 300)

Plans serialize to one JSON object per line (``write_trace``/``read_trace``) so a
run's schedule can be replayed and diffed.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import IO, Union

from sagellm.core.kv import KVTier
from sagellm.core.serialization import SerializableMixin, SerializationError
from sagellm.core.validation import (
    check_int,
    check_positive_int,
    check_str,
    coerce_enum,
    coerce_tuple,
    invalid,
)


class IRNodeKind(str, Enum):
    PREFILL_CHUNK = "prefill_chunk"
    DECODE = "decode"
    KV_ONLOAD = "kv_onload"
    KV_OFFLOAD = "kv_offload"
    KV_MIGRATE = "kv_migrate"

    def __str__(self) -> str:
        return self.value

    @property
    def is_compute(self) -> bool:
        """Prefill and decode nodes run the model and spend the token budget."""
        return self in (IRNodeKind.PREFILL_CHUNK, IRNodeKind.DECODE)


class IRCycleError(ValueError):
    """The graph's edges form a cycle; the message lists one."""


@dataclass(frozen=True)
class IRNode(SerializableMixin):
    """One unit of work in a step.

    Attributes:
        node_id: unique within its graph.
        kind: what the node does.
        request_id: the request it serves.
        token_start / token_end: the token range ``[start, end)`` it covers; non-empty.
        block_ids: device block ids it reads or writes (required for KV moves).
        tier: compute nodes: ``device``; ``kv_onload``/``kv_offload``: the non-device
            tier read from / written to; ``kv_migrate``: the tier on the peer.
        peer: ``kv_migrate`` only: the engine (id or address) the KV goes to.
    """

    node_id: str
    kind: IRNodeKind
    request_id: str
    token_start: int
    token_end: int
    block_ids: tuple[int, ...] = ()
    tier: KVTier = KVTier.DEVICE
    peer: str = ""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "node_id", self.node_id)
        kind = coerce_enum(owner, "kind", self.kind, IRNodeKind)
        object.__setattr__(self, "kind", kind)
        check_str(owner, "request_id", self.request_id)
        check_int(owner, "token_start", self.token_start, minimum=0)
        check_int(owner, "token_end", self.token_end, minimum=self.token_start + 1)
        block_ids = coerce_tuple(owner, "block_ids", self.block_ids, int, "integers >= 0")
        for block_id in block_ids:
            check_int(owner, "block_ids", block_id, minimum=0)
        object.__setattr__(self, "block_ids", block_ids)
        tier = coerce_enum(owner, "tier", self.tier, KVTier)
        object.__setattr__(self, "tier", tier)
        check_str(owner, "peer", self.peer, allow_empty=True)
        if kind.is_compute and tier is not KVTier.DEVICE:
            raise invalid(owner, "tier", tier.value, f"'device' for a {kind.value} node")
        if kind in (IRNodeKind.KV_ONLOAD, IRNodeKind.KV_OFFLOAD) and tier is KVTier.DEVICE:
            raise invalid(owner, "tier", tier.value, f"'host', 'ssd' or 'remote' for a {kind.value} node")
        if not kind.is_compute and not block_ids:
            raise invalid(owner, "block_ids", block_ids, f"at least one block id for a {kind.value} node")
        if kind is IRNodeKind.KV_MIGRATE and not self.peer:
            raise invalid(owner, "peer", self.peer, "the target engine for a kv_migrate node")
        if kind is not IRNodeKind.KV_MIGRATE and self.peer:
            raise invalid(owner, "peer", self.peer, f"'' for a {kind.value} node (only kv_migrate has a peer)")

    @property
    def num_tokens(self) -> int:
        return self.token_end - self.token_start


@dataclass(frozen=True)
class IRGraph(SerializableMixin):
    """Nodes plus "before -> after" edges; always acyclic (checked on construction).

    Attributes:
        nodes: the nodes; their order breaks ties in ``topological_order``.
        edges: ``(before_id, after_id)`` pairs.
    """

    nodes: tuple[IRNode, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        nodes = coerce_tuple(owner, "nodes", self.nodes, IRNode, "IRNode")
        object.__setattr__(self, "nodes", nodes)
        ids = [n.node_id for n in nodes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise invalid(owner, "nodes", dupes, "unique node ids")
        edges = []
        known = set(ids)
        for edge in coerce_tuple(owner, "edges", self.edges, (tuple, list), "(before_id, after_id) pairs"):
            if len(edge) != 2 or not all(isinstance(e, str) for e in edge):
                raise invalid(owner, "edges", edge, "(before_id, after_id) pairs of node id strings")
            before, after = edge
            for end in (before, after):
                if end not in known:
                    raise invalid(owner, "edges", tuple(edge), "edges between node ids in nodes: " + ", ".join(ids))
            if before == after:
                raise IRCycleError(f"{owner}.edges: self-loop on node {before!r}")
            pair = (before, after)
            if pair in edges:
                raise invalid(owner, "edges", pair, "each edge at most once")
            edges.append(pair)
        object.__setattr__(self, "edges", tuple(edges))
        self.topological_order()

    def node(self, node_id: str) -> IRNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id!r}; nodes: {[n.node_id for n in self.nodes]}")

    def predecessors(self, node_id: str) -> tuple[str, ...]:
        self.node(node_id)
        return tuple(b for b, a in self.edges if a == node_id)

    def successors(self, node_id: str) -> tuple[str, ...]:
        self.node(node_id)
        return tuple(a for b, a in self.edges if b == node_id)

    def by_kind(self, kind: IRNodeKind | str) -> tuple[IRNode, ...]:
        kind = coerce_enum("IRGraph.by_kind", "kind", kind, IRNodeKind)
        return tuple(n for n in self.nodes if n.kind is kind)

    def by_request(self, request_id: str) -> tuple[IRNode, ...]:
        return tuple(n for n in self.nodes if n.request_id == request_id)

    def __len__(self) -> int:
        return len(self.nodes)

    def topological_order(self) -> tuple[IRNode, ...]:
        """Nodes with every edge's ``before`` ahead of its ``after``.

        Deterministic: among nodes that are ready, the one listed first in ``nodes``
        goes first.

        Raises:
            IRCycleError: naming one cycle, e.g. ``a -> b -> a``.
        """
        index = {n.node_id: i for i, n in enumerate(self.nodes)}
        indegree = [0] * len(self.nodes)
        succ: list[list[int]] = [[] for _ in self.nodes]
        for before, after in self.edges:
            succ[index[before]].append(index[after])
            indegree[index[after]] += 1
        ready = [i for i, d in enumerate(indegree) if d == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in succ[i]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(self.nodes):
            remaining = {i for i, d in enumerate(indegree) if d > 0}
            cycle = self._find_cycle(remaining, succ)
            path = " -> ".join(self.nodes[i].node_id for i in cycle)
            raise IRCycleError(f"IRGraph.edges: cycle {path}")
        return tuple(self.nodes[i] for i in order)

    @staticmethod
    def _find_cycle(remaining: set[int], succ: list[list[int]]) -> list[int]:
        """One cycle among ``remaining`` (the nodes Kahn's algorithm could not order).

        Every remaining node has a remaining predecessor, so walking predecessors
        from any of them must revisit a node; the revisited stretch is a cycle.
        """
        pred: dict[int, list[int]] = {i: [] for i in remaining}
        for i in remaining:
            for j in succ[i]:
                if j in remaining:
                    pred[j].append(i)
        seen: dict[int, int] = {}
        walk: list[int] = []
        current = min(remaining)
        while current not in seen:
            seen[current] = len(walk)
            walk.append(current)
            current = min(pred[current])
        cycle = list(reversed(walk[seen[current]:]))
        first = cycle.index(min(cycle))
        cycle = cycle[first:] + cycle[:first]
        return cycle + [cycle[0]]


MetadataValue = Union[bool, int, float, str]


@dataclass(frozen=True)
class ExecutionPlan(SerializableMixin):
    """One engine step.

    Attributes:
        step_id: monotonically increasing step counter (>= 0).
        graph: the work of the step.
        token_budget: most tokens the step may compute; prefill and decode nodes'
            tokens together must fit.
        metadata: free-form scalar annotations (strategy name, queue lengths...).
    """

    step_id: int
    graph: IRGraph
    token_budget: int
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_int(owner, "step_id", self.step_id, minimum=0)
        if not isinstance(self.graph, IRGraph):
            raise invalid(owner, "graph", self.graph, "an IRGraph")
        check_positive_int(owner, "token_budget", self.token_budget)
        if not isinstance(self.metadata, dict):
            raise invalid(owner, "metadata", self.metadata, "a dict of str -> bool/int/float/str")
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)):
                raise invalid(owner, "metadata", {key: value}, "a dict of str -> bool/int/float/str")
        scheduled = self.num_scheduled_tokens
        if scheduled > self.token_budget:
            raise invalid(
                owner, "token_budget", self.token_budget, f">= the {scheduled} tokens its prefill/decode nodes compute"
            )

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(n.num_tokens for n in self.graph.nodes if n.kind.is_compute)

    def to_trace_line(self) -> str:
        """The plan as one compact JSON line (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_trace_line(cls, line: str) -> ExecutionPlan:
        return cls.from_json(line)


def write_trace(plans: Iterable[ExecutionPlan], fp: IO[str]) -> int:
    """Write plans as JSON lines; returns how many were written."""
    count = 0
    for plan in plans:
        fp.write(plan.to_trace_line() + "\n")
        count += 1
    return count


def read_trace(fp: IO[str]) -> list[ExecutionPlan]:
    """Read JSON-lines plans (blank lines ignored); errors name the 1-based line number."""
    plans = []
    for lineno, line in enumerate(fp, start=1):
        if not line.strip():
            continue
        try:
            plans.append(ExecutionPlan.from_trace_line(line))
        except ValueError as exc:
            raise SerializationError(f"trace line {lineno}: {exc}") from exc
    return plans
