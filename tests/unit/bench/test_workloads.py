"""Seeded text workloads: determinism, shapes, the multi-turn prefix property, validation."""

from __future__ import annotations

import pytest

from sagellm.bench.workloads import WORKLOADS, Workload, WorkloadSpec, build_workload, prefix_stats


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir("llama"))


def test_same_seed_same_requests_other_seed_other_requests(tokenizer):
    spec = WorkloadSpec("chat", {"requests": 5}, seed=3)
    a, b = build_workload(spec, tokenizer), build_workload(spec, tokenizer)
    assert a.requests == b.requests and a.digest() == b.digest()
    assert build_workload(spec.with_seed(4), tokenizer).digest() != a.digest()


def test_chat_lengths_within_their_ranges(tokenizer):
    w = build_workload(WorkloadSpec("chat", {"requests": 20, "prompt_range": (16, 64), "output_range": (8, 12)}, 1), tokenizer)
    assert len(w.requests) == 20 and len({r.session for r in w.requests}) == 20
    assert all(8 <= r.max_tokens <= 12 for r in w.requests)
    assert all(12 <= r.prompt_tokens <= 70 for r in w.requests)  # cut at token boundaries, re-tokenized


def test_multi_turn_prompts_extend_the_previous_turn(tokenizer):
    w = build_workload(WorkloadSpec("multi_turn", {"sessions": 3, "turns": 4, "system_tokens": 32}, 5), tokenizer)
    assert [(r.session, r.turn) for r in w.requests[:4]] == [(0, 0), (1, 0), (2, 0), (0, 1)]
    by_key = {(r.session, r.turn): r for r in w.requests}
    for (s, t), r in by_key.items():
        if t:
            assert r.prompt.startswith(by_key[(s, t - 1)].prompt)
            assert r.prompt_tokens > by_key[(s, t - 1)].prompt_tokens
    system = w.requests[0].prompt.split("\nUser:")[0]
    assert all(r.prompt.startswith(system) for r in w.requests)


def test_docqa_interleaves_documents(tokenizer):
    w = build_workload(WorkloadSpec("docqa", {"documents": 3, "questions": 2}, 2), tokenizer)
    docs = [r.prompt.split("\nQuestion:")[0] for r in w.requests]
    assert docs[0:3] == docs[3:6] and len(set(docs)) == 3
    stats = prefix_stats(w, tokenizer, block_size=64, device_tokens=128)
    assert stats["reuses"] == 3 and stats["working_set_over_device_kv"] > 1


def test_long_context_and_roofline(tokenizer):
    w = build_workload(WorkloadSpec("long_context", {"requests": 1, "prompt_tokens": 2048, "output_tokens": 4}, 0), tokenizer)
    assert abs(w.requests[0].prompt_tokens - 2048) <= 32 and w.requests[0].max_tokens == 4
    r = build_workload(WorkloadSpec("roofline", {"probes": 2, "prefill_tokens": 256}, 0), tokenizer)
    assert [q.tag for q in r.requests] == ["prefill", "base", "decode"] * 2
    assert [q.max_tokens for q in r.requests[:3]] == [1, 1, 64]


def test_mixed_slo_has_both_classes(tokenizer):
    w = build_workload(WorkloadSpec("mixed_slo", {"requests": 30}, 1), tokenizer)
    assert {r.slo_class for r in w.requests} == {"interactive", "batch"}


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="unknown workload kind 'chatty'; valid: chat, docqa"):
        WorkloadSpec("chatty")
    with pytest.raises(ValueError, match="unknown parameter"):
        WorkloadSpec("chat", {"turns": 3})
    assert set(WORKLOADS) == {"chat", "multi_turn", "docqa", "long_context", "mixed_slo", "roofline"}


def test_workload_summary_counts():
    from sagellm.bench.workloads import RequestSpec

    w = Workload(WorkloadSpec("chat"), (RequestSpec(0, "a", 3, 0, prompt_tokens=5), RequestSpec(1, "b", 4, 1, prompt_tokens=7)),
                 "two")
    s = w.summary()
    assert (s["requests"], s["prompt_tokens"], s["output_tokens"], s["prompt_tokens_min_max"]) == (2, 12, 7, [5, 7])
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        RequestSpec(2, "c", 0, 2)
