"""``EngineInfo``: what the control plane knows about one inference engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum

from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_positive_int, check_str, coerce_enum, invalid


class EngineKind(str, Enum):
    """``SAGELLM`` runs in-process; the others are reached over HTTP at ``base_url``."""

    SAGELLM = "sagellm"
    VLLM = "vllm"
    LMDEPLOY = "lmdeploy"
    SGLANG = "sglang"
    OPENAI = "openai"

    def __str__(self) -> str:
        return self.value


class EngineState(str, Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class EngineInfo(SerializableMixin):
    """One engine registered with the control plane.

    Attributes:
        engine_id: unique name within the control plane.
        kind: which engine implementation.
        model: model name or path it serves.
        device: device it runs on ("cpu", "cuda:0", "ascend:1", ...).
        base_url: ``http(s)://`` root of its OpenAI-compatible API; required for every
            kind except ``sagellm`` (in-process, may be None).
        capacity: most requests it serves concurrently (>= 1).
        state: lifecycle state; only ``healthy`` engines receive requests.
        labels: free-form string tags used by routing (e.g. {"zone": "a"}).
    """

    engine_id: str
    kind: EngineKind
    model: str
    device: str = "cpu"
    base_url: str | None = None
    capacity: int = 1
    state: EngineState = EngineState.STARTING
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "engine_id", self.engine_id)
        kind = coerce_enum(owner, "kind", self.kind, EngineKind)
        object.__setattr__(self, "kind", kind)
        check_str(owner, "model", self.model)
        check_str(owner, "device", self.device)
        if self.base_url is None:
            if kind is not EngineKind.SAGELLM:
                raise invalid(owner, "base_url", None, f"an http:// or https:// URL for a {kind.value} engine")
        elif not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise invalid(owner, "base_url", self.base_url, "an http:// or https:// URL, or None for sagellm")
        check_positive_int(owner, "capacity", self.capacity)
        object.__setattr__(self, "state", coerce_enum(owner, "state", self.state, EngineState))
        if not isinstance(self.labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise invalid(owner, "labels", self.labels, "a dict of str -> str")

    @property
    def is_routable(self) -> bool:
        """True when the engine may receive requests."""
        return self.state is EngineState.HEALTHY

    @property
    def is_remote(self) -> bool:
        return self.base_url is not None

    def with_state(self, state: EngineState | str) -> EngineInfo:
        """A copy in ``state`` (the info object itself is immutable)."""
        return dataclasses.replace(self, state=state)
