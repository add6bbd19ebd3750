"""session_end: a finished stream closes without waiting for the engine to end the session."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from lmdeploy.serve.async_engine import AsyncEngine

from sagellm.engines.lmdeploy import session_end


@dataclass
class FakeGenOut:
    response: str
    finish_reason: str | None = None


class FakeAsyncEngine:
    """Yields like ``AsyncEngine.generate``; after the final output it waits for ``engine_free``,
    standing in for the session-end RPC the engine serves only between forwards."""

    def __init__(self, finish_reason="length"):
        self.finish_reason = finish_reason
        self.engine_free = asyncio.Event()
        self.ended: list[int] = []
        self.closed: list[int] = []

    async def generate(self, messages, session_id, gen_config=None, sequence_start=True, sequence_end=True):
        try:
            yield FakeGenOut("a")
            yield FakeGenOut("b")
            yield FakeGenOut("", self.finish_reason)
            if sequence_end:
                await self.engine_free.wait()
                self.ended.append(session_id)
        finally:
            self.closed.append(session_id)


generate = session_end._wrap_generate(FakeAsyncEngine.generate)


def test_the_stream_ends_before_the_session_end_completes():
    async def run():
        engine = FakeAsyncEngine()
        outs = [out async for out in generate(engine, "p", 7)]  # would hang without the plugin
        assert [(o.response, o.finish_reason) for o in outs] == [("a", None), ("b", None), ("", "length")]
        assert engine.ended == []
        engine.engine_free.set()
        await asyncio.wait_for(asyncio.gather(*session_end._pending), timeout=5)
        assert engine.ended == [7] and engine.closed == [7]

    asyncio.run(run())


def test_an_error_output_is_final_too():
    async def run():
        engine = FakeAsyncEngine(finish_reason="error")
        outs = [out async for out in generate(engine, "p", 3)]
        assert outs[-1].finish_reason == "error"
        engine.engine_free.set()
        await asyncio.wait_for(asyncio.gather(*session_end._pending), timeout=5)
        assert engine.ended == [3]

    asyncio.run(run())


def test_a_kept_session_is_not_detached():
    async def run():
        engine = FakeAsyncEngine()
        outs = [out async for out in generate(engine, "p", 5, sequence_end=False)]
        assert outs[-1].finish_reason == "length"
        assert engine.closed == [5] and not session_end._pending

    asyncio.run(run())


def test_a_consumer_that_stops_early_closes_the_generation():
    async def run():
        engine = FakeAsyncEngine()
        gen = generate(engine, "p", 9)
        assert (await gen.__anext__()).response == "a"
        await gen.aclose()  # the client went away mid-stream
        assert engine.closed == [9] and engine.ended == [] and not session_end._pending

    asyncio.run(run())


def test_a_failing_session_end_is_logged_not_raised(caplog):
    async def failing(self, messages, session_id, sequence_end=True):
        yield FakeGenOut("", "length")
        raise RuntimeError("engine gone")

    async def run():
        outs = [out async for out in session_end._wrap_generate(failing)(None, "p", 4)]
        assert outs[-1].finish_reason == "length"
        await asyncio.wait_for(asyncio.gather(*session_end._pending), timeout=5)

    asyncio.run(run())
    assert "session 4: ending the session failed" in caplog.text


def test_install_wraps_once(monkeypatch):
    monkeypatch.setattr(AsyncEngine, "generate", FakeAsyncEngine.generate)
    session_end.install_session_end()
    wrapped = AsyncEngine.generate
    session_end.install_session_end()
    assert AsyncEngine.generate is wrapped
    assert wrapped.__wrapped__ is FakeAsyncEngine.generate


def test_a_generate_without_sequence_end_is_left_alone(monkeypatch, caplog):
    async def generate(self, messages, session_id):
        yield FakeGenOut("", "length")

    monkeypatch.setattr(AsyncEngine, "generate", generate)
    session_end.install_session_end()
    assert AsyncEngine.generate is generate
    assert "session_end not installed" in caplog.text
