"""Plugin selection (SAGELLM_PLUGINS) and the CPU device module."""

from __future__ import annotations

import pytest

from sagellm.engines.lmdeploy import plugin
from sagellm.engines.lmdeploy.cpu import device_module


def test_all_is_default():
    assert plugin.selected_plugins("") == ["api_guard", "auth", "cpu", "kv_tiers", "logits_rows", "metrics", "mp_handshake", "pd", "scheduler", "session_end", "slowdown", "spec_decode", "text_tail", "trie_leaves", "trie_lru"]
    assert plugin.selected_plugins("all") == ["api_guard", "auth", "cpu", "kv_tiers", "logits_rows", "metrics", "mp_handshake", "pd", "scheduler", "session_end", "slowdown", "spec_decode", "text_tail", "trie_leaves", "trie_lru"]


def test_none_selects_nothing():
    assert plugin.selected_plugins("none") == []


def test_list_is_sorted_and_deduplicated():
    assert plugin.selected_plugins("cpu, api_guard,cpu") == ["api_guard", "cpu"]


def test_unknown_plugin_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown plugin\(s\) gpu; valid names: api_guard, auth, cpu, kv_tiers, logits_rows, metrics"):
        plugin.selected_plugins("cpu,gpu")


def test_cpu_memory_budget_caps_free(monkeypatch):
    monkeypatch.setenv("SAGELLM_CPU_MEMORY_GIB", "0.5")
    free, total = device_module.mem_get_info()
    assert free == min(1 << 29, device_module._available_ram())
    assert total >= free


@pytest.mark.parametrize("value", ["lots", "0", "-1"])
def test_bad_memory_budget_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("SAGELLM_CPU_MEMORY_GIB", value)
    with pytest.raises(ValueError, match="SAGELLM_CPU_MEMORY_GIB"):
        device_module.mem_get_info()


def test_streams_and_events_behave_synchronously():
    stream = device_module.Stream()
    assert stream is not device_module.current_stream()
    with device_module.stream(stream):
        assert device_module.current_stream() is stream
    assert device_module.current_stream() is device_module.default_stream()
    start, end = device_module.Event(enable_timing=True), device_module.Event(enable_timing=True)
    start.record()
    end.record()
    assert start.query() and end.elapsed_time(start) <= 0 <= start.elapsed_time(end)
