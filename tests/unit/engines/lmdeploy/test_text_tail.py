"""text_tail: the text LMDeploy holds back at the end of a generation reaches the client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from lmdeploy.messages import GenerationConfig
from lmdeploy.serve.async_engine import AsyncEngine
from lmdeploy.tokenizer import DetokenizeState, Tokenizer

from sagellm.engines.lmdeploy import text_tail

# a greedy generation of the tiny Llama ("one two three", 8 tokens): its last token is a lone
# UTF-8 byte, so LMDeploy's incremental detokenizer holds back everything after the last full text
GENERATED = [3616, 3718, 3374, 3309, 714, 3111, 2060, 101]


@dataclass
class FakeGenOut:
    response: str
    token_ids: list
    finish_reason: str | None = None


class FakeAsyncEngine:
    """Yields outputs the way ``AsyncEngine.generate`` does, for one generation cut into ``chunks``."""

    def __init__(self, tokenizer, chunks, finish_reason="length"):
        self.tokenizer, self.chunks, self.finish_reason = tokenizer, chunks, finish_reason

    async def generate(self, messages, session_id, gen_config=None, **kwargs):
        state, all_ids, start = DetokenizeState(0), [], 0
        for size in self.chunks:
            all_ids += GENERATED[start:start + size]
            start += size
            offset = state.ids_offset
            text, state = self.tokenizer.detokenize_incrementally(all_ids, state)
            yield FakeGenOut(text, all_ids[offset:])
        yield FakeGenOut("", [], self.finish_reason)  # LMDeploy's final output: '' unless the stop string is kept


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return Tokenizer(str(tiny_model_dir("llama")))


def _collect(engine) -> str:
    async def run():
        generate = text_tail._wrap_generate(FakeAsyncEngine.generate)
        return [out async for out in generate(engine, "one two three", 1, GenerationConfig())]

    return "".join(out.response for out in asyncio.run(run()))


@pytest.mark.parametrize("chunks", [[8], [1, 3, 3, 1], [1, 6, 1], [4, 4], [1] * 8])
def test_every_batching_of_outputs_gives_the_full_decode(tokenizer, chunks):
    full = tokenizer.decode(GENERATED)
    assert full == " plel glal jojiolgleadoust differ zeslozio town\ufffd"
    assert _collect(FakeAsyncEngine(tokenizer, chunks)) == full


def test_without_the_plugin_the_tail_depends_on_batching(tokenizer):
    async def run(chunks):
        return "".join([out.response async for out in FakeAsyncEngine(tokenizer, chunks).generate("p", 1)])

    assert asyncio.run(run([1, 3, 3, 1])) == " plel glal jojiolgleadoust differ zeslozio town"
    assert asyncio.run(run([1, 3, 4])) == " plel glal jojiolgleadoust"
    assert asyncio.run(run([8])) == ""


def test_an_error_output_is_left_alone(tokenizer):
    assert _collect(FakeAsyncEngine(tokenizer, [1, 3, 4], finish_reason="error")) == " plel glal jojiolgleadoust"


def test_held_back_tail_needs_a_prefix():
    assert text_tail.held_back_tail("abc\ufffd", "ab") == "c\ufffd"
    assert text_tail.held_back_tail("abc", "abc") == ""
    assert text_tail.held_back_tail("xbc", "ab") == ""


def test_install_wraps_once(monkeypatch):
    unwrapped = getattr(AsyncEngine.generate, "__sagellm_original__", AsyncEngine.generate)
    monkeypatch.setattr(AsyncEngine, "generate", unwrapped)
    text_tail.install_text_tail()
    wrapped = AsyncEngine.generate
    text_tail.install_text_tail()
    assert AsyncEngine.generate is wrapped
    assert wrapped.__sagellm_original__ is unwrapped
