"""`sage llm engine start --kv-tiers device,ssd --ssd-cache-dir DIR`: the flags reach the engine process,
prompts that ended at prefill land on SSD, and the next request with that prefix is served from it."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sagellm.models.corpus import sample_prompts
from tests.e2e.server import start_server
from tests.e2e.test_gateway import request

pytestmark = pytest.mark.slow

MODEL_NAME = "tiny"


@pytest.fixture(scope="module")
def ssd_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("kv-ssd")


@pytest.fixture(scope="module")
def engine(tiny_model_dir, ssd_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("tiers") / "server.log"
    running = start_server(
        tiny_model_dir("llama"), log, "--session-len", "512", "--model-name", MODEL_NAME, "--block-size", "16",
        "--kv-tiers", "device,ssd", "--ssd-cache-dir", str(ssd_dir), "--ssd-cache-gib", "0.5", "--kv-policy", "lfu",
        env={"SAGELLM_CPU_MEMORY_GIB": "2", "SAGELLM_KV_TIERS": "device"},  # the flag wins over the env
    )
    yield running
    running.stop()


def tier_tokens(base_url: str, family: str) -> dict[str, float]:
    _, _, body = request(f"{base_url}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    samples = families[family].samples if family in families else []
    totals: dict[str, float] = {}
    for sample in samples:
        if sample.name.endswith("_total"):
            totals[sample.labels["tier"]] = totals.get(sample.labels["tier"], 0.0) + sample.value
    return totals


def test_flags_put_finished_prefills_on_ssd_and_serve_them_back(engine, ssd_dir):
    assert "KV tiers: device,ssd (policy lfu)" in engine.log()
    document = " ".join(sample_prompts(8, seed=11))
    body = {"model": MODEL_NAME, "prompt": document, "max_tokens": 1, "temperature": 0}
    status, _, first = request(f"{engine.base_url}/v1/completions", body)
    assert status == 200, first
    # the session ends after the reply and the SSD writes are asynchronous: wait (bounded) for the files
    deadline = time.monotonic() + 30
    while not sorted(ssd_dir.glob("*.kvb")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(ssd_dir.glob("*.kvb")), "the finished prefill's blocks were not written to the SSD tier"
    status, _, again = request(f"{engine.base_url}/v1/completions", {**body, "prompt": document + " and more"})
    assert status == 200, again
    assert tier_tokens(engine.base_url, "sagellm_prefix_hit_tokens").get("ssd", 0) > 0
