"""Routing across engines: pure policies over a snapshot, and prefix-affinity hashing.

A policy is a function ``RoutingSnapshot -> RouteDecision``; it reads the request (model,
prefix chunk hashes, SLO class, device) and the engines (state, models, load) and returns
the engine to use, or why none fits. Policies keep no state: the ``ControlPlaneManager``
builds the snapshot, applies the decision (in-flight count, prefix index) and owns
everything that changes. They are registered in ``ROUTING_POLICIES``:

=================  ==========================================================================
``prefix_affinity``  the engine that served the longest matching prompt prefix, if it is
                     eligible and has headroom for the request's SLO class; else least loaded
``least_loaded``     lowest in-flight / capacity; ties go to the engine routed to longest ago
``round_robin``      the engine routed to longest ago
=================  ==========================================================================

Eligibility (all policies): the engine serves the model, is healthy, was not already tried
for this request, runs on the requested device kind (``x-sagellm-device``) and accepts the
SLO class (engine label ``slo_classes``, comma-separated; absent = all).

SLO classes and how much load prefix affinity tolerates on the prefix holder:
``interactive`` (default when the request carries a TTFT/TPOT SLO) -- below capacity;
``standard`` -- below twice the capacity; ``batch`` -- any load. Past that, the request
goes to the least-loaded engine when one has more room.

Prefix affinity hashes the prompt text (chat messages rendered as ``role`` + content) in
chunks of ``chunk_chars`` characters, each hash chained on the previous one, so chunk
``i``'s hash names the whole prefix up to it. Only full chunks count: a prompt shorter than
one chunk has no affinity.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sagellm.core.capability import DEVICE_KINDS
from sagellm.core.engine_info import EngineInfo, EngineState
from sagellm.core.registry import Registry
from sagellm.core.validation import check_choice, check_int, check_str

SLO_CLASSES: tuple[str, ...] = ("interactive", "standard", "batch")
#: Load (in-flight / capacity) below which the prefix holder keeps a request, per SLO class.
AFFINITY_LOAD_LIMIT: dict[str, float] = {"interactive": 1.0, "standard": 2.0, "batch": float("inf")}
SLO_CLASSES_LABEL = "slo_classes"
DEFAULT_CHUNK_CHARS = 128
DEFAULT_MAX_CHUNKS = 32


@dataclass(frozen=True)
class EngineView:
    """One engine as routing sees it.

    Attributes:
        info: the registered ``EngineInfo`` (state, device, capacity, labels).
        models: model names it serves (from its ``/v1/models``, or as registered).
        in_flight: requests forwarded to it and not finished.
        last_routed: sequence number of the last request routed to it (0 = never).
    """

    info: EngineInfo
    models: tuple[str, ...]
    in_flight: int = 0
    last_routed: int = 0

    @property
    def engine_id(self) -> str:
        return self.info.engine_id

    @property
    def load(self) -> float:
        return self.in_flight / self.info.capacity

    @property
    def device_kind(self) -> str:
        return self.info.device.split(":", 1)[0]

    def accepts(self, slo_class: str) -> bool:
        allowed = self.info.labels.get(SLO_CLASSES_LABEL)
        if not allowed:
            return True
        return slo_class in {c.strip() for c in allowed.split(",")}


@dataclass(frozen=True)
class RouteRequest:
    """What routing needs to know about one request.

    Attributes:
        model: the ``model`` field of the request.
        prefix_hashes: chained prompt-prefix chunk hashes (``prefix_chunk_hashes``).
        slo_class: one of ``SLO_CLASSES``.
        device: required device kind (``DEVICE_KINDS``), None = any.
        exclude: engine ids not to use (already failed for this request).
    """

    model: str
    prefix_hashes: tuple[str, ...] = ()
    slo_class: str = "standard"
    device: str | None = None
    exclude: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "model", self.model)
        check_choice(owner, "slo_class", self.slo_class, SLO_CLASSES)
        if self.device is not None:
            check_choice(owner, "device", self.device, DEVICE_KINDS)
        object.__setattr__(self, "prefix_hashes", tuple(self.prefix_hashes))
        object.__setattr__(self, "exclude", frozenset(self.exclude))


@dataclass(frozen=True)
class RoutingSnapshot:
    """The request, the engines, and who served each of the request's prefix chunks.

    ``prefix_owners[i]`` is the engine that last served a prompt whose chunk ``i`` hash
    equals ``request.prefix_hashes[i]`` (None when no engine did).
    """

    request: RouteRequest
    engines: tuple[EngineView, ...]
    prefix_owners: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class RouteDecision:
    """Where a request goes, or why it cannot go anywhere.

    Attributes:
        engine_id: the chosen engine; None when none fits.
        reason: ``prefix_affinity``, ``least_loaded``, ``round_robin``, or when none fits
            ``no_model`` / ``no_engine``.
        detail: one human sentence (shown in errors and the routing log).
        matched_chunks: prefix chunks the chosen engine already served (prefix affinity).
        status: HTTP status for a request that cannot be routed (404 unknown model,
            503 no eligible engine); 200 when routed.
    """

    engine_id: str | None
    reason: str
    detail: str = ""
    matched_chunks: int = 0
    status: int = 200

    def __post_init__(self) -> None:
        check_str(type(self).__name__, "reason", self.reason)
        check_int(type(self).__name__, "matched_chunks", self.matched_chunks, minimum=0)


RoutingPolicy = Callable[[RoutingSnapshot], RouteDecision]
ROUTING_POLICIES: Registry[RoutingPolicy] = Registry("routing policy")


def eligible_engines(snapshot: RoutingSnapshot) -> tuple[list[EngineView], RouteDecision | None]:
    """The engines that may take the request, or the decision explaining why there are none."""
    request = snapshot.request
    serving = [e for e in snapshot.engines if request.model in e.models and e.info.state is not EngineState.STOPPED]
    if not serving:
        served = sorted({m for e in snapshot.engines if e.info.state is not EngineState.STOPPED for m in e.models})
        return [], RouteDecision(
            None, "no_model", f"no engine serves model {request.model!r}; served models: {served or 'none'}", status=404
        )
    candidates = [
        e for e in serving
        if e.info.is_routable
        and e.engine_id not in request.exclude
        and (request.device is None or e.device_kind == request.device)
        and e.accepts(request.slo_class)
    ]
    if not candidates:
        states = ", ".join(f"{e.engine_id}={e.info.state.value}@{e.info.device}" for e in serving)
        wanted = f" on device {request.device!r}" if request.device else ""
        tried = f" (already tried: {', '.join(sorted(request.exclude))})" if request.exclude else ""
        return [], RouteDecision(
            None,
            "no_engine",
            f"no healthy engine for model {request.model!r}{wanted} and SLO class {request.slo_class!r}{tried}; "
            f"engines: {states}",
            status=503,
        )
    return candidates, None


def _least_loaded_key(engine: EngineView) -> tuple[float, int, int, str]:
    return (engine.load, engine.in_flight, engine.last_routed, engine.engine_id)


@ROUTING_POLICIES.register("least_loaded")
def least_loaded(snapshot: RoutingSnapshot) -> RouteDecision:
    candidates, refusal = eligible_engines(snapshot)
    if refusal is not None:
        return refusal
    best = min(candidates, key=_least_loaded_key)
    return RouteDecision(best.engine_id, "least_loaded", f"{best.in_flight} in flight of capacity {best.info.capacity}")


@ROUTING_POLICIES.register("round_robin")
def round_robin(snapshot: RoutingSnapshot) -> RouteDecision:
    candidates, refusal = eligible_engines(snapshot)
    if refusal is not None:
        return refusal
    best = min(candidates, key=lambda e: (e.last_routed, e.engine_id))
    return RouteDecision(best.engine_id, "round_robin", "routed to longest ago")


@ROUTING_POLICIES.register("prefix_affinity")
def prefix_affinity(snapshot: RoutingSnapshot) -> RouteDecision:
    candidates, refusal = eligible_engines(snapshot)
    if refusal is not None:
        return refusal
    by_id = {e.engine_id: e for e in candidates}
    limit = AFFINITY_LOAD_LIMIT[snapshot.request.slo_class]
    fallback = min(candidates, key=_least_loaded_key)
    note = "no prefix match"
    for depth in range(len(snapshot.prefix_owners), 0, -1):
        owner = snapshot.prefix_owners[depth - 1]
        if owner is None or owner not in by_id:
            continue
        holder = by_id[owner]
        if holder.load < limit or fallback.load >= holder.load:
            return RouteDecision(
                owner, "prefix_affinity", f"{depth} prefix chunk(s) served by {owner}", matched_chunks=depth
            )
        note = f"prefix holder {owner} is at load {holder.load:.2f} (limit {limit:g} for {snapshot.request.slo_class})"
        break
    return RouteDecision(
        fallback.engine_id, "least_loaded", f"{note}; {fallback.in_flight} in flight of capacity {fallback.info.capacity}"
    )


# ------------------------------------------------------------------ prefix hashing


def render_prompt_text(path: str, body: Mapping[str, Any]) -> str:
    """The prompt of an OpenAI request as one string, for prefix hashing.

    Chat: each message as ``role`` + U+001F + content + U+001E (text parts joined, other
    parts as JSON). Completions: the prompt string (the first one of a list; token-id lists
    as comma-separated ids). Anything else: "".
    """
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        parts = []
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            parts.append(f"{message.get('role', '')}\x1f{_content_text(message.get('content'))}\x1e")
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return ",".join(str(t) for t in prompt)
        prompt = first
    if isinstance(prompt, list):
        return ",".join(str(t) for t in prompt)
    return prompt if isinstance(prompt, str) else ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            else:
                out.append(json.dumps(part, sort_keys=True, default=str))
        return "".join(out)
    return "" if content is None else json.dumps(content, sort_keys=True, default=str)


def prefix_chunk_hashes(
    text: str, chunk_chars: int = DEFAULT_CHUNK_CHARS, max_chunks: int = DEFAULT_MAX_CHUNKS
) -> tuple[str, ...]:
    """Chained hashes of the full ``chunk_chars``-character chunks of ``text`` (at most ``max_chunks``)."""
    if chunk_chars < 1 or max_chunks < 0:
        raise ValueError(f"chunk_chars must be >= 1 and max_chunks >= 0, got {chunk_chars}, {max_chunks}")
    hashes = []
    previous = b""
    for i in range(min(len(text) // chunk_chars, max_chunks)):
        chunk = text[i * chunk_chars : (i + 1) * chunk_chars].encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(previous + chunk, digest_size=8).digest()
        hashes.append(digest.hex())
        previous = digest
    return tuple(hashes)


@dataclass
class PrefixIndex:
    """Which engine last served each prefix chunk hash; least recently used entries drop first."""

    capacity: int = 65536
    _owners: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        check_int(type(self).__name__, "capacity", self.capacity, minimum=1)

    def __len__(self) -> int:
        return len(self._owners)

    def owners(self, hashes: Sequence[str]) -> tuple[str | None, ...]:
        return tuple(self._owners.get(h) for h in hashes)

    def insert(self, hashes: Sequence[str], engine_id: str) -> None:
        for h in hashes:
            self._owners[h] = engine_id
            self._owners.move_to_end(h)
        while len(self._owners) > self.capacity:
            self._owners.popitem(last=False)

    def forget_engine(self, engine_id: str) -> int:
        """Drop every entry owned by ``engine_id`` (its cache is gone); returns how many."""
        dropped = [h for h, owner in self._owners.items() if owner == engine_id]
        for h in dropped:
            del self._owners[h]
        return len(dropped)
