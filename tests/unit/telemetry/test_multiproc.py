"""Counters incremented in another process (the engine) show on this process's scrape."""

from __future__ import annotations

import os
import subprocess
import sys

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from sagellm.telemetry import multiproc

CHILD = """
from sagellm.telemetry import metrics
metrics.prefix_lookup_tokens("device", 10)
metrics.prefix_hit_tokens("device", 7)
metrics.kv_blocks("device", used=3, free=5)
metrics.observe_ttft(0.3)
"""


def run_child(directory) -> None:
    env = {**os.environ, multiproc.ENV: str(directory)}
    subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, timeout=60)


def scrape(directory) -> dict:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    text = multiproc.render(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_processes_merge(tmp_path):
    run_child(tmp_path)
    run_child(tmp_path)
    got = scrape(tmp_path)
    assert got[("sagellm_prefix_hit_tokens_total", (("tier", "device"),))] == 14
    assert got[("sagellm_prefix_lookup_tokens_total", (("tier", "device"),))] == 20
    assert got[("sagellm_ttft_seconds_count", ())] == 2
    assert got[("sagellm_kv_blocks", (("state", "used"), ("tier", "device")))] == 3


def test_prepare_keeps_an_existing_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(multiproc.ENV, str(tmp_path))
    assert multiproc.prepare_multiprocess_dir() == tmp_path
    assert multiproc.multiprocess_enabled()


def test_prepare_rejects_a_missing_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(multiproc.ENV, str(tmp_path / "absent"))
    try:
        multiproc.prepare_multiprocess_dir()
    except ValueError as err:
        assert "is not a directory" in str(err)
    else:
        raise AssertionError("expected ValueError")


def test_prepare_creates_and_exports_a_private_directory():
    code = (
        "import os, prometheus_client\n"
        "from sagellm.telemetry import multiproc, metrics\n"
        "path = multiproc.prepare_multiprocess_dir()\n"
        "assert os.environ['PROMETHEUS_MULTIPROC_DIR'] == str(path) and path.is_dir()\n"
        "metrics.prefix_hit_tokens('host', 4)\n"
        "assert any(p.name.startswith('counter_') for p in path.iterdir())\n"
        "print(path)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != multiproc.ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    created = out.stdout.strip()
    assert created and not os.path.exists(created)  # removed when the process exits


def test_stale_directories_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    stale = tmp_path / f"{multiproc.DIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{multiproc.DIR_PREFIX}{os.getpid()}-abc"
    other = tmp_path / "sagellm-metrics-notapid"
    for d in (stale, live, other):
        d.mkdir()
    assert multiproc.remove_stale_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
