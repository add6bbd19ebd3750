"""LocalPDDeployment argument checks (the processes themselves are exercised by benchmarks and tests/e2e/test_pd.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagellm.control_plane.pd_local import LocalPDDeployment


def test_needs_a_decode_engine(tmp_path: Path):
    with pytest.raises(ValueError, match="decode_engines: got 0; accepted: >= 1"):
        LocalPDDeployment.start("model", decode_engines=0, log_dir=tmp_path)


def test_engine_urls_lists_prefill_first():
    pd = LocalPDDeployment(url="http://r", prefill_url="http://p", decode_urls=["http://d1", "http://d2"], kv_address="127.0.0.1:1")
    assert pd.engine_urls == ["http://p", "http://d1", "http://d2"]
    pd.stop()  # nothing started: a no-op
