"""The cpu device's quantized-KV storage dtype: chosen per process, and read from SAGELLM_KV_DTYPE at registration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sagellm.engines.lmdeploy.cpu.device import KV_DTYPE_ENV, kv_quant_storage, set_kv_quant_storage

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture
def restore_storage():
    yield
    set_kv_quant_storage("auto")


@pytest.mark.parametrize("kv_dtype, storage", [
    ("fp8_e4m3", torch.float8_e4m3fn),
    ("fp8_e5m2", torch.float8_e5m2),
    ("int8", torch.uint8),
    ("int4", torch.uint8),
    ("auto", torch.uint8),
])
def test_set_kv_quant_storage(restore_storage, kv_dtype, storage):
    from lmdeploy.pytorch.plugins import get_device_spec

    set_kv_quant_storage("fp8_e5m2")
    set_kv_quant_storage(kv_dtype)
    assert kv_quant_storage() == storage
    # what LMDeploy's cache engine reads (cache_engine.py: extra.get('kv_quant_dtype', torch.uint8))
    assert get_device_spec("cpu").extra.get("kv_quant_dtype", torch.uint8) == storage


def test_unknown_kv_dtype_is_refused(restore_storage):
    set_kv_quant_storage("fp8_e4m3")
    with pytest.raises(ValueError) as err:
        set_kv_quant_storage("fp8")
    assert str(err.value) == (
        "set_kv_quant_storage: kv_dtype got 'fp8'; accepted: one of 'auto', 'int8', 'int4', 'fp8_e4m3', 'fp8_e5m2'"
    )
    assert kv_quant_storage() == torch.float8_e4m3fn  # unchanged


PROBE = """
import json
from sagellm.engines.lmdeploy.cpu.device import kv_quant_storage
print(json.dumps(str(kv_quant_storage())))
"""


@pytest.mark.parametrize("env_value, storage", [("fp8_e5m2", "torch.float8_e5m2"), ("int8", "torch.uint8"),
                                                (None, "torch.uint8")])
def test_a_fresh_process_reads_the_environment_at_registration(env_value, storage):
    """What ``lmdeploy serve api_server``'s spawned engine process does (the server exports the variable)."""
    env = {key: value for key, value in os.environ.items() if key != KV_DTYPE_ENV}
    if env_value is not None:
        env[KV_DTYPE_ENV] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == storage
