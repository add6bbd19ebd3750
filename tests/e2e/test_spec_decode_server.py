"""Speculative decoding through the server: ``sage llm engine start --draft-model`` serves greedy
answers token-identical to transformers and says it speculates."""

from __future__ import annotations

import random

import pytest

from tests.e2e.server import start_server
from tests.e2e.test_pd import generate
from tests.integration.engines.oracle import transformers_greedy

pytestmark = pytest.mark.slow

NEW_TOKENS = 29  # not a multiple of k + 1: the last step overshoots and is cut


def test_server_with_a_draft_model_matches_transformers(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    # the target drafting for itself: a random-weight model accepts part of its own drafts (float
    # rounding differs between one-token and multi-token passes), so accept and reject paths both run
    server = start_server(model, tmp_path / "server.log", "--draft-model", str(model), "--num-speculative-tokens", "3",
                          "--session-len", "1024", "--block-size", "16", env={"SAGELLM_CPU_MEMORY_GIB": "1"})
    try:
        assert "[sagellm] speculative decoding: draft" in server.log()
        rng = random.Random(5)
        prompts = [[rng.randrange(5, 4000) for _ in range(length)] for length in (7, 40, 90)]
        outputs = []
        for ids in prompts:
            status, _, body = generate(server.base_url, ids, NEW_TOKENS)
            assert status == 200, body
            outputs.append(body["output_ids"])
        assert outputs == transformers_greedy(model, prompts, NEW_TOKENS)
    finally:
        server.stop()
