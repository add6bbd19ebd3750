"""Drive one workload against one endpoint: closed-loop concurrency or open-loop Poisson arrivals.

Dispatch order: the first turn of every session in workload order, then each later turn as soon as
the turn before it in its session has finished (it joins the back of the ready queue, so sessions
interleave). Single-turn workloads are simply sent in order.

* ``closed``: ``concurrency`` clients; each sends its next request when its previous one finished.
* ``poisson``: requests are released at exponentially distributed gaps (``rate`` per second, seeded);
  a release waits if no request is ready yet (a session's next turn still depends on its last one)
  or ``max_inflight`` requests are outstanding. The report gives the achieved rate.

Every request is bounded by ``request_timeout_s`` and the whole run by ``deadline_s``; requests not
finished by the deadline are recorded as errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sagellm.bench.client import Endpoint, RequestRecord, send
from sagellm.bench.workloads import RequestSpec, Workload

__all__ = ["LoadPattern", "run_load", "run_load_sync"]


@dataclass(frozen=True)
class LoadPattern:
    mode: Literal["closed", "poisson"] = "closed"
    concurrency: int = 1
    rate: float | None = None
    max_inflight: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "poisson"):
            raise ValueError(f"load mode must be 'closed' or 'poisson', got {self.mode!r}")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError(f"closed-loop concurrency must be >= 1, got {self.concurrency}")
        if self.mode == "poisson" and not (self.rate and self.rate > 0):
            raise ValueError(f"poisson load needs a rate > 0 requests/s, got {self.rate!r}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")

    def describe(self) -> str:
        if self.mode == "closed":
            return f"closed loop, concurrency {self.concurrency}"
        return f"open loop, Poisson {self.rate:g} req/s (seed {self.seed}, at most {self.max_inflight} in flight)"

    @property
    def max_connections(self) -> int:
        return self.concurrency if self.mode == "closed" else self.max_inflight


def _record_for(req: RequestSpec) -> RequestRecord:
    return RequestRecord(id=req.id, session=req.session, turn=req.turn, slo_class=req.slo_class,
                         max_tokens=req.max_tokens, tag=req.tag)


async def run_load(endpoint: Endpoint, workload: Workload, pattern: LoadPattern, *, request_timeout_s: float = 600.0,
                   deadline_s: float = 3600.0, on_done: Callable[[RequestRecord], None] | None = None,
                   transport=None) -> tuple[list[RequestRecord], float]:
    """Run the workload; returns the records (in completion order) and the wall time in seconds.

    ``transport``: an ``httpx`` async transport to use instead of the network (tests pass a mock).
    """
    import httpx

    requests = workload.requests
    by_session: dict[int, list[RequestSpec]] = {}
    for r in requests:
        by_session.setdefault(r.session, []).append(r)
    later: dict[int, deque[RequestSpec]] = {}
    first_ids = set()
    for session, reqs in by_session.items():
        reqs.sort(key=lambda r: r.turn)
        first_ids.add(reqs[0].id)
        later[session] = deque(reqs[1:])
    ready: deque[RequestSpec] = deque(r for r in requests if r.id in first_ids)
    records: list[RequestRecord] = []
    in_flight: dict[int, RequestRecord] = {}
    changed = asyncio.Condition()
    dispatched = finished = 0
    total = len(requests)

    limits = httpx.Limits(max_connections=pattern.max_connections + 4, max_keepalive_connections=pattern.max_connections + 4)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=request_timeout_s, transport=transport) as client:

        async def one(req: RequestSpec) -> None:
            nonlocal finished
            record = _record_for(req)
            in_flight[req.id] = record
            try:
                await send(client, endpoint, record, req.prompt, timeout_s=request_timeout_s, t0=t0)
            finally:
                in_flight.pop(req.id, None)
                records.append(record)
                if on_done is not None:
                    on_done(record)
                async with changed:
                    finished += 1
                    queue = later.get(req.session)
                    if queue:
                        ready.append(queue.popleft())
                    changed.notify_all()

        async def take() -> RequestSpec | None:
            nonlocal dispatched
            async with changed:
                while not ready:
                    if dispatched >= total:
                        return None
                    await changed.wait()
                dispatched += 1
                return ready.popleft()

        async def closed_worker() -> None:
            while (req := await take()) is not None:
                await one(req)

        async def poisson() -> None:
            rng = random.Random(pattern.seed)
            tasks: list[asyncio.Task] = []
            release = 0.0
            for _ in range(total):
                release += rng.expovariate(pattern.rate)
                delay = t0 + release - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                async with changed:
                    while dispatched - finished >= pattern.max_inflight:
                        await changed.wait()
                req = await take()
                if req is None:
                    break
                tasks.append(asyncio.create_task(one(req)))
            await asyncio.gather(*tasks)

        if pattern.mode == "closed":
            main = asyncio.gather(*(closed_worker() for _ in range(min(pattern.concurrency, total))))
        else:
            main = poisson()
        try:
            await asyncio.wait_for(main, timeout=deadline_s)
        except asyncio.TimeoutError:
            done = {r.id for r in records}
            for req in requests:
                if req.id not in done:
                    record = in_flight.get(req.id) or _record_for(req)
                    record.error = f"not finished within the scenario deadline ({deadline_s:.0f} s)"
                    records.append(record)
    return records, time.perf_counter() - t0


def run_load_sync(endpoint: Endpoint, workload: Workload, pattern: LoadPattern, **kwargs) -> tuple[list[RequestRecord], float]:
    """:func:`run_load` in a fresh event loop."""
    return asyncio.run(run_load(endpoint, workload, pattern, **kwargs))
