"""Streaming OpenAI ``/v1/completions`` client that times every streamed chunk.

One :func:`send` call is one request: it POSTs ``stream=true`` with ``stream_options.include_usage``,
reads the server-sent events and returns a :class:`RequestRecord`:

* a *chunk* is an event whose choice carries output (text, LMDeploy's ``gen_tokens`` or vLLM's
  ``token_ids``); its time is when the client read it;
* tokens per chunk come from the token ids when the server returns them (``return_token_ids``,
  understood by LMDeploy and vLLM), else one per chunk; the request's output and prompt token counts
  come from the final ``usage`` event when the server sends one;
* ``cached_tokens`` is ``usage.prompt_tokens_details.cached_tokens`` (vLLM with
  ``--enable-prompt-tokens-details``), None when the server does not report it.

TTFT is submit -> first chunk, E2E is submit -> end of stream, TPOT is (E2E - TTFT) / (output - 1).
Errors (connection, HTTP status, malformed events, timeout) end up in ``RequestRecord.error``; they
are counted, never raised, so one bad request does not abort a run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Endpoint", "RequestRecord", "send"]


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests: an OpenAI-compatible base URL and the model name it serves."""

    base_url: str
    model: str
    api_key: str | None = None
    #: extra request fields; ``ignore_eos`` makes every server generate exactly ``max_tokens``.
    extra_body: tuple[tuple[str, Any], ...] = (("ignore_eos", True), ("return_token_ids", True))

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


@dataclass
class RequestRecord:
    """What one request measured. Times in seconds; ``start_s`` is relative to the scenario start."""

    id: int
    session: int
    turn: int
    slo_class: str
    max_tokens: int
    tag: str = ""
    start_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int = 0
    cached_tokens: int | None = None
    chunks: int = 0
    #: gaps between consecutive output chunks (inter-token latency when a chunk carries one token).
    itl_s: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def to_dict(self, keep_itl: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "itl_s"}
        d["tpot_s"] = self.tpot_s
        d["max_itl_s"] = max(self.itl_s) if self.itl_s else None
        if keep_itl:
            d["itl_s"] = list(self.itl_s)
        return d


def _chunk_tokens(choice: dict[str, Any]) -> int:
    ids = choice.get("token_ids")
    if ids is None:
        ids = choice.get("gen_tokens")
    if ids:
        return len(ids)
    return 1 if choice.get("text") else 0


def _apply_usage(record: RequestRecord, usage: dict[str, Any]) -> None:
    if usage.get("prompt_tokens") is not None:
        record.prompt_tokens = int(usage["prompt_tokens"])
    if usage.get("completion_tokens") is not None:
        record.output_tokens = int(usage["completion_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        record.cached_tokens = int(details["cached_tokens"])


async def send(client, endpoint: Endpoint, record: RequestRecord, prompt: str, *, timeout_s: float,
               t0: float) -> RequestRecord:
    """Send one streaming completion; fill and return ``record`` (``t0``: the scenario's perf_counter origin)."""
    import httpx

    body: dict[str, Any] = {
        "model": endpoint.model,
        "prompt": prompt,
        "max_tokens": record.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **dict(endpoint.extra_body),
    }
    start = time.perf_counter()
    record.start_s = start - t0
    counted = 0
    last_chunk: float | None = None
    usage_seen = False
    try:
        async with client.stream("POST", endpoint.base_url.rstrip("/") + "/v1/completions", json=body,
                                 headers=endpoint.headers(), timeout=timeout_s) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                record.error = f"HTTP {response.status_code}: {text[:300]}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                now = time.perf_counter()
                if event.get("usage"):
                    _apply_usage(record, event["usage"])
                    usage_seen = True
                for choice in event.get("choices") or ():
                    n = _chunk_tokens(choice)
                    if choice.get("finish_reason"):
                        record.finish_reason = choice["finish_reason"]
                    if n == 0:
                        continue
                    counted += n
                    record.chunks += 1
                    if record.ttft_s is None:
                        record.ttft_s = now - start
                    else:
                        record.itl_s.append(now - last_chunk)
                    last_chunk = now
    except (httpx.HTTPError, OSError, ValueError) as err:
        record.error = f"{type(err).__name__}: {err}"[:300]
        return record
    record.e2e_s = time.perf_counter() - start
    if not usage_seen:
        record.output_tokens = counted
    if record.ttft_s is None and record.error is None:
        record.error = "no output chunk in the stream"
    return record
