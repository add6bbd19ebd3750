"""Telemetry unit tests count exact values in fresh registries: that needs prometheus_client's
single-process mode in this test process (multiprocess mode keys values by name per process)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def single_process_prometheus():
    from prometheus_client import values

    if values.ValueClass is not values.MutexValue:
        pytest.fail("an earlier test switched prometheus_client to multiprocess mode inside the test process")
    yield
