"""``RequestMetadata``: scheduling facts about one request (priority, tenant, SLOs).

They arrive with an OpenAI-compatible request, either as extra JSON body fields
or as ``x-sagellm-*`` headers (a gateway sets headers; when both are present the
header wins, so a trusted gateway can override what a client claims):

=====================  ===========================  =========================
meaning                body field                   header
=====================  ===========================  =========================
priority (int)         ``priority``                 ``x-sagellm-priority``
tenant (str)           ``user``                     ``x-sagellm-tenant``
TTFT SLO (ms, > 0)     ``slo_ttft_ms``              ``x-sagellm-slo-ttft-ms``
TPOT SLO (ms, > 0)     ``slo_tpot_ms``              ``x-sagellm-slo-tpot-ms``
request id             --                           ``x-request-id``
=====================  ===========================  =========================

Priority follows vLLM's convention: **lower values are served first**; 0 is the default.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_float, check_int, check_str

PRIORITY_HEADER = "x-sagellm-priority"
TENANT_HEADER = "x-sagellm-tenant"
SLO_TTFT_HEADER = "x-sagellm-slo-ttft-ms"
SLO_TPOT_HEADER = "x-sagellm-slo-tpot-ms"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class RequestMetadata(SerializableMixin):
    """Scheduling metadata of one request.

    Attributes:
        request_id: unique id.
        priority: lower is served first; default 0.
        tenant: who the request is billed/isolated as; None = anonymous.
        slo_ttft_ms: target time to first token, milliseconds; None = no target.
        slo_tpot_ms: target time per output token, milliseconds; None = no target.
        arrival_time: wall-clock seconds since the epoch when the request arrived.
    """

    request_id: str
    priority: int = 0
    tenant: str | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    arrival_time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_str(owner, "request_id", self.request_id)
        check_int(owner, "priority", self.priority)
        if self.tenant is not None:
            check_str(owner, "tenant", self.tenant)
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            value = getattr(self, name)
            if value is not None:
                check_float(owner, name, value, positive=True)
                object.__setattr__(self, name, float(value))
        check_float(owner, "arrival_time", self.arrival_time, minimum=0.0)
        object.__setattr__(self, "arrival_time", float(self.arrival_time))

    @property
    def has_slo(self) -> bool:
        return self.slo_ttft_ms is not None or self.slo_tpot_ms is not None

    @classmethod
    def from_openai_extras(
        cls,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        request_id: str | None = None,
        arrival_time: float | None = None,
    ) -> RequestMetadata:
        """Read priority, tenant and SLOs from an OpenAI request body and its headers.

        Header names are matched case-insensitively; a header overrides the body
        field with the same meaning. ``request_id`` defaults to the ``x-request-id``
        header, else a fresh ``req-<uuid hex>``; ``arrival_time`` defaults to now.

        Raises:
            ValueError: naming the body field or header, the bad value and what is accepted.
        """
        lowered = {str(k).lower(): v for k, v in headers.items()}

        def pick(body_key: str, header: str) -> tuple[Any, str] | None:
            if header in lowered:
                return lowered[header], f"header {header!r}"
            if body_key in body and body[body_key] is not None:
                return body[body_key], f"body field {body_key!r}"
            return None

        kwargs: dict[str, Any] = {}
        found = pick("priority", PRIORITY_HEADER)
        if found is not None:
            kwargs["priority"] = _parse_int(*found)
        found = pick("user", TENANT_HEADER)
        if found is not None:
            value, source = found
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{source}: got {value!r}; accepted: a non-empty string (the tenant)")
            kwargs["tenant"] = value.strip()
        for key, header in (("slo_ttft_ms", SLO_TTFT_HEADER), ("slo_tpot_ms", SLO_TPOT_HEADER)):
            found = pick(key, header)
            if found is not None:
                kwargs[key] = _parse_positive_ms(*found)
        rid = request_id or lowered.get(REQUEST_ID_HEADER) or f"req-{uuid.uuid4().hex}"
        return cls(
            request_id=rid,
            arrival_time=time.time() if arrival_time is None else arrival_time,
            **kwargs,
        )

    def to_headers(self) -> dict[str, str]:
        """The ``x-sagellm-*`` (and ``x-request-id``) headers that carry this metadata to another engine."""
        headers = {REQUEST_ID_HEADER: self.request_id, PRIORITY_HEADER: str(self.priority)}
        if self.tenant is not None:
            headers[TENANT_HEADER] = self.tenant
        if self.slo_ttft_ms is not None:
            headers[SLO_TTFT_HEADER] = repr(self.slo_ttft_ms)
        if self.slo_tpot_ms is not None:
            headers[SLO_TPOT_HEADER] = repr(self.slo_tpot_ms)
        return headers


def _parse_int(value: Any, source: str) -> int:
    accepted = "an integer (lower is served first)"
    if isinstance(value, bool):
        raise ValueError(f"{source}: got {value!r}; accepted: {accepted}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{source}: got {value!r}; accepted: {accepted}")


def _parse_positive_ms(value: Any, source: str) -> float:
    accepted = "a finite number of milliseconds > 0"
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{source}: got {value!r}; accepted: {accepted}")
    return number

