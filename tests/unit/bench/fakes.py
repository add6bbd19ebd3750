"""Fakes for the bench unit tests: an in-process OpenAI streaming server (httpx mock transport) and
hand-made request records. Nothing here talks to a real engine."""

from __future__ import annotations

import asyncio
import json

import httpx

from sagellm.bench.client import RequestRecord


class FakeOpenAIServer:
    """Answers ``/v1/completions`` with a server-sent-event stream of ``max_tokens`` tokens.

    ``style``: how a chunk names its tokens: ``token_ids`` (vLLM), ``gen_tokens`` (LMDeploy) or ``text``
    (plain OpenAI, one token per chunk). ``per_chunk`` tokens go in one chunk. ``status`` != 200 answers
    an error. Records the prompts in arrival order, completions in order, and the peak number in flight.
    """

    def __init__(self, style: str = "token_ids", per_chunk: int = 1, status: int = 200, usage: bool = True,
                 cached_tokens: int | None = None):
        self.style, self.per_chunk, self.status, self.usage, self.cached = style, per_chunk, status, usage, cached_tokens
        self.arrivals: list[str] = []
        self.completions: list[str] = []
        self.bodies: list[dict] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": "fake failure"}})
        prompt = body["prompt"]
        self.arrivals.append(prompt)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=self._events(prompt, int(body["max_tokens"])))

    def _chunk(self, n: int) -> dict:
        choice: dict = {"index": 0, "text": "x" * n, "finish_reason": None}
        if self.style == "token_ids":
            choice["token_ids"] = list(range(n))
        elif self.style == "gen_tokens":
            choice["gen_tokens"] = list(range(n))
        return {"choices": [choice]}

    async def _events(self, prompt: str, max_tokens: int):
        # The client stops reading at [DONE], so a request counts as finished just before it is sent.
        done = False
        try:
            sent = 0
            while sent < max_tokens:
                await asyncio.sleep(0)  # let other requests interleave
                n = min(self.per_chunk if self.style != "text" else 1, max_tokens - sent)
                sent += n
                yield f"data: {json.dumps(self._chunk(n))}\n\n".encode()
            if self.usage:
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": max_tokens,
                         "total_tokens": len(prompt.split()) + max_tokens}
                if self.cached is not None:
                    usage["prompt_tokens_details"] = {"cached_tokens": self.cached}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            done = self._finish(prompt)
            yield b"data: [DONE]\n\n"
        finally:
            if not done:
                self._finish(prompt)

    def _finish(self, prompt: str) -> bool:
        self.in_flight -= 1
        self.completions.append(prompt)
        return True


def fake_record(i: int, *, ttft: float | None = 0.1, e2e: float | None = 1.0, out: int = 10, prompt: int = 100,
                itl: list[float] | None = None, chunks: int | None = None, slo_class: str = "default", tag: str = "",
                error: str | None = None, cached: int | None = None) -> RequestRecord:
    """A hand-made record with exact values (what a request measured)."""
    r = RequestRecord(id=i, session=i, turn=0, slo_class=slo_class, max_tokens=out, tag=tag)
    r.ttft_s, r.e2e_s, r.output_tokens, r.prompt_tokens, r.error, r.cached_tokens = ttft, e2e, out, prompt, error, cached
    r.itl_s = list(itl or [])
    r.chunks = chunks if chunks is not None else len(r.itl_s) + 1
    return r
