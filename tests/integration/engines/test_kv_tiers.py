"""Host/SSD KV tiers behind LMDeploy's prefix trie: same greedy tokens as transformers, under forced
eviction, after a restart that reloads the SSD tier, and with corrupted SSD files."""

from __future__ import annotations

import pytest

from sagellm.kv_runtime.config import KVTierConfig
from tests.integration.engines.oracle import transformers_greedy

pytestmark = pytest.mark.slow

NUM_DEVICE_BLOCKS = 48  # of 16 tokens: the four ~200-token documents below need ~52, so the trie must evict
NEW_TOKENS = 8


def documents(count: int = 4) -> list[str]:
    from sagellm.models.corpus import sample_prompts

    return [" ".join(sample_prompts(14, seed=seed)) for seed in range(count)]


def run_rounds(model_dir, prompts: list[str], new_tokens: int = NEW_TOKENS) -> tuple[list[list[int]], list[list[int]]]:
    """Each prompt in turn (one request at a time, so earlier documents get evicted)."""
    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    config = PytorchEngineConfig(
        device_type="cpu", dtype="float32", block_size=16, session_len=1024, num_gpu_blocks=NUM_DEVICE_BLOCKS,
        max_batch_size=4, eager_mode=True, enable_prefix_caching=True,
    )
    pipe = pipeline(str(model_dir), backend_config=config, log_level="ERROR")
    gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, top_k=1, ignore_eos=True)
    try:
        outputs = [list(pipe.batch_infer([p], gen_config=gen, do_preprocess=False)[0].token_ids) for p in prompts]
        prompt_ids = [pipe.tokenizer.encode(p, add_bos=True) for p in prompts]
    finally:
        pipe.close()
    return prompt_ids, outputs


def two_rounds() -> list[str]:
    docs = documents()
    return [doc + " first question" for doc in docs] + [doc + " second question" for doc in docs]


def test_host_tier_restores_evicted_prefixes_exactly(tiny_model_dir, install_tiers):
    model_dir = tiny_model_dir("llama")
    hooks = install_tiers(KVTierConfig(kv_tiers=("device", "host"), host_cache_gib=0.25))
    prompt_ids, outputs = run_rounds(model_dir, two_rounds())
    assert outputs == transformers_greedy(model_dir, prompt_ids, NEW_TOKENS)
    assert hooks.stats.offloaded_blocks > 0
    assert hooks.stats.restored_blocks > 0
    assert hooks.stats.hit_tokens["host"] == 16 * hooks.stats.restored_blocks
    assert hooks.stats.rejected_blocks == 0


def test_prompts_that_end_at_prefill_are_reused_from_the_host_tier(tiny_model_dir, install_tiers):
    model_dir = tiny_model_dir("llama")
    hooks = install_tiers(KVTierConfig(kv_tiers=("device", "host"), host_cache_gib=0.25))
    docs = documents(2)
    # one new token: LMDeploy finishes these at prefill and its trie never caches them
    prompt_ids, outputs = run_rounds(model_dir, [doc + " first question" for doc in docs] + docs, new_tokens=1)
    assert outputs == transformers_greedy(model_dir, prompt_ids, 1)
    assert hooks.stats.hit_tokens["host"] > 0
    assert hooks.stats.hit_tokens["device"] == 0
    assert hooks.stats.rejected_blocks == 0


def shared_full_blocks(first: list[int], second: list[int], block_size: int = 16) -> int:
    """Tokens in the full blocks ``second`` can reuse from ``first``: those within their common prefix,
    leaving at least one token of ``second`` to compute (as the trie does)."""
    common = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    return min(common // block_size, (len(second) - 1) // block_size) * block_size


def test_ssd_tier_survives_restart_and_rejects_corruption(tiny_model_dir, install_tiers, tmp_path):
    from sagellm.engines.lmdeploy.trie_lru import install_trie_lru

    install_trie_lru()  # exact LRU: the first four documents are the oldest, so all of them are evicted
    model_dir = tiny_model_dir("llama")
    config = KVTierConfig(kv_tiers=("device", "ssd"), ssd_cache_dir=str(tmp_path / "kv"), ssd_cache_gib=0.25)
    docs = documents(8)
    first = install_tiers(config)
    # the last four documents push every block of the first four out of the device cache, onto SSD
    first_ids, _ = run_rounds(model_dir, [doc + " first question" for doc in docs])
    docs = docs[:4]
    assert first.stats.offloaded_blocks > 0
    first.close()  # flushes the asynchronous writes; a restart sees only durable files
    files = sorted((tmp_path / "kv").glob("*.kvb"))
    assert len(files) == first.stats.offloaded_blocks

    # "restart": a new engine and a new store over the same directory
    second = install_tiers(config)
    prompts = [doc + " second question" for doc in docs]
    prompt_ids, outputs = run_rounds(model_dir, prompts)
    expected = transformers_greedy(model_dir, prompt_ids, NEW_TOKENS)
    assert outputs == expected
    reusable = sum(shared_full_blocks(a, b) for a, b in zip(first_ids, prompt_ids))
    assert reusable >= 4 * 11 * 16  # each document is at least 11 full blocks
    assert second.stats.hit_tokens["ssd"] == reusable, second.stats.as_dict()
    assert second.stats.rejected_blocks == 0
    second.close()

    # flip one payload byte in every block file: every restore must be refused and recomputed
    for path in sorted((tmp_path / "kv").glob("*.kvb")):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    third = install_tiers(config)
    _, outputs = run_rounds(model_dir, prompts)
    assert outputs == expected
    assert third.stats.hit_tokens["ssd"] == 0
    assert third.stats.rejected_blocks > 0
