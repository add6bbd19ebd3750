"""Aggregation over repetitions, ratios, targets, and the JSON / Markdown / PNG report (from fake results)."""

from __future__ import annotations

import json

import pytest

from sagellm.bench import SCHEMA_VERSION
from sagellm.bench.report import load_report, render_markdown, write_report
from sagellm.bench.runner import aggregate, evaluate_targets, ratios
from sagellm.bench.suites import Suite, Target


def result(scenario: str, peer: str, rep: int, tput: float, ttft: float) -> dict:
    return {"scenario": scenario, "peer": peer, "repetition": rep,
            "metrics": {"requests": 4, "errors": 0, "output_throughput": tput, "ttft_p50": ttft, "e2e_p50": 2 * ttft,
                        "slo_attainment_by_class": {"default": 1.0}}}


RESULTS = [result("chat_c8", "sagellm", r, t, f) for r, (t, f) in enumerate([(100.0, 0.2), (140.0, 0.4), (120.0, 0.3)])] + \
          [result("chat_c8", "vllm", r, t, f) for r, (t, f) in enumerate([(200.0, 0.1), (240.0, 0.3), (220.0, 0.2)])]


def fake_report() -> dict:
    summary = aggregate(RESULTS)
    table = ratios(summary, "vllm")
    suite = Suite("fake", "fake suite", (), targets=(Target("chat_c8", "output_throughput", 1.0, "sagellm >= vllm"),
                                                     Target("docqa", "output_throughput", 2.0, "docqa 2x")))
    return {
        "schema": SCHEMA_VERSION, "name": "fake-1", "suite": "fake", "suite_description": "a fake run",
        "started_at": "20260101T000000Z", "duration_s": 60.0, "command": ["sage", "bench", "run"],
        "git": {"commit": "abc", "dirty": False}, "machine": {"cpu_model": "CPU", "usable_cpus": 2, "mem_total_gib": 8},
        "peak": {"matmul_flops": {"float32": 1e11}, "mem_bandwidth_bytes_per_s": 1e10, "method": "m"},
        "repetitions": 3, "reference": "vllm", "peers": ["sagellm", "vllm"],
        "groups": [{"name": "g", "model": "/m/tiny", "model_shape": {"model_type": "llama", "hidden_size": 8, "num_layers": 1,
                    "num_heads": 1, "num_kv_heads": 1, "vocab_size": 9, "max_position_embeddings": 64},
                    "profile": {"dtype": "float32", "kv_blocks": 16, "block_size": 16, "kv_tokens": 256, "max_model_len": 64,
                                "max_batch_size": 4, "sagellm_kv_tiers": ["device"], "sagellm_host_cache_gib": 1.0},
                    "peers": [{"name": "sagellm", "kind": "sagellm", "startup_s": 1.0, "idle_cpu_fraction": 0.01, "versions": {},
                               "env": {"SAGELLM_PLUGINS": "all"}}],
                    "scenarios": [{"name": "chat_c8", "load": "closed loop, concurrency 8", "slo": {},
                                   "workload": {"kind": "chat"}, "workload_summary": {"description": "d", "requests": 4}}]}],
        "results": RESULTS, "summary": summary, "ratios": table, "targets": evaluate_targets(suite, table), "notes": ["n1"],
    }


def test_aggregate_takes_medians_over_repetitions():
    summary = aggregate(RESULTS)
    assert summary["chat_c8"]["sagellm"]["output_throughput"] == 120.0
    assert summary["chat_c8"]["sagellm"]["ttft_p50"] == 0.3 and summary["chat_c8"]["vllm"]["e2e_p50"] == 0.4
    assert summary["chat_c8"]["sagellm"]["repetitions"] == 3


def test_ratios_and_targets():
    table = ratios(aggregate(RESULTS), "vllm")
    assert table["chat_c8"]["sagellm"]["output_throughput"] == pytest.approx(120 / 220)
    assert table["chat_c8"]["sagellm"]["ttft_p50"] == pytest.approx(0.2 / 0.3)
    assert "vllm" not in table["chat_c8"]
    target = fake_report()["targets"][0]
    assert target["met"] is False and target["value"] == pytest.approx(120 / 220)


def test_markdown_has_the_tables():
    md = render_markdown(fake_report())
    assert "# Benchmark `fake-1` (suite `fake`)" in md
    assert "| chat_c8 | 0.55x | 0.67x |" in md  # headline ratios: throughput, TTFT p50
    assert "- sagellm >= vllm: 0.55x (target ≥ 1x) — **NOT met**" in md
    assert "- docqa 2x: not measured in this run (target ≥ 2x)" in md  # a scenario the run left out
    assert "| sagellm | 4 (0) | 120.0 |" in md
    assert "- n1" in md


def test_write_and_load(tmp_path):
    paths = write_report(fake_report(), tmp_path)
    assert sorted(paths) == ["json", "md", "png"] and paths["png"].stat().st_size > 10_000
    assert load_report(paths["json"])["summary"]["chat_c8"]["vllm"]["output_throughput"] == 220.0
    assert "![plots](fake-1.png)" in paths["md"].read_text()
    data = json.loads(paths["json"].read_text())
    data["schema"] = "sagellm-bench/0"
    paths["json"].write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema"):
        load_report(paths["json"])


def test_write_result_files_writes_the_report_and_its_markdown(tmp_path):
    from sagellm.bench.report import write_result_files

    json_path, md_path = write_result_files(tmp_path / "out", "bench-1", {"a": [1, 2]}, "# title\n")
    assert (json_path, md_path) == (tmp_path / "out" / "bench-1.json", tmp_path / "out" / "bench-1.md")
    assert json_path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert md_path.read_text() == "# title\n"
