"""Finding the gateway: SAGELLM_GATEWAY_URL, else the record; UnifiedInferenceClient."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sagellm.control_plane import discovery
from sagellm.control_plane.client import UnifiedInferenceClient


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGELLM_CACHE_DIR", str(tmp_path))
    for name in ("SAGELLM_GATEWAY_URL", "SAGELLM_API_KEY", "SAGELLM_API_KEYS"):
        monkeypatch.delenv(name, raising=False)


def test_nothing_found_says_how_to_start_one():
    with pytest.raises(LookupError, match="start one with `sage gateway start`"):
        UnifiedInferenceClient.discover()


def test_record_of_a_live_process_is_used_and_removed_only_by_its_owner():
    discovery.write_record(discovery.GatewayRecord(pid=os.getpid(), base_url="http://127.0.0.1:1234", started_at=1.0))
    assert discovery.gateway_url() == "http://127.0.0.1:1234"
    discovery.remove_record(os.getpid() + 1)
    assert discovery.read_record() is not None
    discovery.remove_record(os.getpid())
    assert discovery.read_record() is None


def test_stale_and_corrupt_records_are_dropped():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    discovery.write_record(discovery.GatewayRecord(pid=dead.pid, base_url="http://x", started_at=1.0))
    assert discovery.read_record() is None and not discovery.record_path().exists()
    discovery.record_path().write_text("{oops")
    assert discovery.read_record() is None and not discovery.record_path().exists()


def test_env_wins_and_client_is_openai(monkeypatch):
    discovery.write_record(discovery.GatewayRecord(pid=os.getpid(), base_url="http://recorded:1", started_at=1.0))
    monkeypatch.setenv("SAGELLM_GATEWAY_URL", "http://from-env:2/v1/")
    monkeypatch.setenv("SAGELLM_API_KEYS", "k1,k2")
    from openai import OpenAI

    client = UnifiedInferenceClient.create()
    assert isinstance(client, OpenAI)
    assert str(client.base_url) == "http://from-env:2/v1/"
    assert client.api_key == "k1"
    monkeypatch.setenv("SAGELLM_API_KEY", "mine")
    assert UnifiedInferenceClient.create(base_url="http://explicit:3").api_key == "mine"
    assert str(UnifiedInferenceClient.create(base_url="http://explicit:3", api_key="x").base_url) == "http://explicit:3/v1/"
