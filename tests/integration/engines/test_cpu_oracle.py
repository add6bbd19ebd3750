"""Greedy output through the patched LMDeploy engine on the cpu device equals transformers, token for token."""

from __future__ import annotations

import random

import pytest

from tests.integration.engines.oracle import transformers_greedy

pytestmark = pytest.mark.slow

WORDS = (
    "the a cat dog river house light small quick brown jumps over under lazy bright cold warm "
    "what why how when where is are was were one two three four five model token engine cache"
).split()


def make_prompts(count: int, min_words: int, max_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(count)]


def build_pipeline(model_dir, **overrides):
    from lmdeploy import PytorchEngineConfig, pipeline

    config = dict(
        device_type="cpu",
        dtype="float32",
        block_size=16,
        session_len=1024,
        num_gpu_blocks=512,
        max_batch_size=32,
        eager_mode=True,
        enable_prefix_caching=True,
    )
    config.update(overrides)
    return pipeline(str(model_dir), backend_config=PytorchEngineConfig(**config), log_level="ERROR")


def engine_greedy(pipe, prompts: list[str], max_new_tokens: int) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids as the engine tokenized them, generated ids) for each prompt."""
    from lmdeploy import GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    responses = pipe.batch_infer(prompts, gen_config=gen, do_preprocess=False)
    prompt_ids = [pipe.tokenizer.encode(prompt, add_bos=True) for prompt in prompts]
    return prompt_ids, [list(response.token_ids) for response in responses]


@pytest.fixture(scope="module", params=[("llama", "native"), ("llama", "torch"), ("qwen2", "native")],
                ids=lambda p: "-".join(p))
def model_and_pipe(request, tiny_model_dir):
    """A pipeline per model and decode attention kernel (the native C++ one, or the torch kernels)."""
    from sagellm.engines.lmdeploy.cpu.config import cpu_device_config

    arch, kernel = request.param
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SAGELLM_CPU_NATIVE_KERNELS", "1" if kernel == "native" else "0")
        cpu_device_config.cache_clear()
        model_dir = tiny_model_dir(arch)
        pipe = build_pipeline(model_dir)
        yield model_dir, pipe
        pipe.close()
    cpu_device_config.cache_clear()  # later tests read the environment again


def test_single_prompt_matches_transformers(model_and_pipe):
    model_dir, pipe = model_and_pipe
    prompt_ids, generated = engine_greedy(pipe, ["the quick brown cat jumps over the lazy dog"], 24)
    assert generated == transformers_greedy(model_dir, prompt_ids, 24)


def test_batch_of_mixed_lengths_matches_transformers(model_and_pipe):
    """20 prompts of 3..120 words: packed prefill of several blocks per sequence, then batched decode."""
    model_dir, pipe = model_and_pipe
    prompts = make_prompts(20, 3, 120, seed=7)
    prompt_ids, generated = engine_greedy(pipe, prompts, 16)
    assert max(len(ids) for ids in prompt_ids) > 3 * 16, "some prompt must span several KV blocks"
    assert generated == transformers_greedy(model_dir, prompt_ids, 16)


def test_shared_prefix_reuses_cache_and_matches_transformers(model_and_pipe):
    """A second prompt sharing a multi-block prefix hits the prefix cache; output is unchanged."""
    model_dir, pipe = model_and_pipe
    shared = " ".join(make_prompts(1, 60, 60, seed=11))
    first = shared + " and the river is cold"
    second = shared + " but the house is warm and bright"
    ids_first, out_first = engine_greedy(pipe, [first], 12)
    ids_second, out_second = engine_greedy(pipe, [second], 12)
    common = 0
    while ids_first[0][common] == ids_second[0][common]:
        common += 1
    assert common >= 2 * 16, "the prompts must share at least two full blocks"
    assert out_first + out_second == transformers_greedy(model_dir, ids_first + ids_second, 12)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_on_cpu(tiny_model_dir, dtype):
    """bf16/fp16 go through the same kernels; numerics differ from float32, so only the shape of the output is exact."""
    pipe = build_pipeline(tiny_model_dir("llama"), dtype=dtype, enable_prefix_caching=False)
    try:
        _, generated = engine_greedy(pipe, make_prompts(4, 5, 40, seed=3), 8)
    finally:
        pipe.close()
    vocab_size = pipe.tokenizer.vocab_size
    assert [len(tokens) for tokens in generated] == [8, 8, 8, 8]
    assert all(0 <= token < vocab_size for tokens in generated for token in tokens)
