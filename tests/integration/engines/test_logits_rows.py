"""``output_logits='all'`` through the real engine on the cpu device: a prompt scored alone gets
the same logits as transformers, its last row included (the ``logits_rows`` plugin)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def test_a_prompt_scored_alone_gets_transformers_logits_in_every_row(tiny_model_dir):
    from lmdeploy import PytorchEngineConfig, pipeline
    from transformers import AutoModelForCausalLM

    model_dir = str(tiny_model_dir("llama"))
    prompts = [[1, 17, 300, 42, 9, 2048, 77, 5, 64, 3000, 11, 12], [1, 400, 401, 402, 403]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = [model(torch.tensor([ids])).logits[0] for ids in prompts]

    config = PytorchEngineConfig(device_type="cpu", dtype="float32", block_size=16, session_len=256,
                                 num_gpu_blocks=32, max_batch_size=4, eager_mode=True)
    pipe = pipeline(model_dir, backend_config=config, log_level="ERROR")
    try:
        # what get_ppl and get_reward_score read (get_reward_score: the last row)
        def logits(batch):
            return [row.float() for row in pipe._run(coro=pipe._async_get_logits(input_ids=batch)).result()]

        alone = [logits([ids])[0] for ids in prompts]  # one sequence per step
        together = logits(prompts)
    finally:
        pipe.close()

    for got, want in zip(alone + together, expected + expected):
        assert got.shape == want.shape
        # stock LMDeploy 0.11: the last row of a prompt scored alone was divided by the temperature (0.8)
        assert (got - want).abs().amax().item() < 1e-4
