"""Patch 0001's seam: plugins load through the entry point; with them off LMDeploy is stock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import json, torch
from lmdeploy.pytorch import plugins
from lmdeploy.messages import PytorchEngineConfig
result = {"device_types": list(plugins.device_types()),
          "module_is_torch_cuda": plugins.device_module("cuda") is torch.cuda,
          "torch_device_cuda": plugins.torch_device("cuda")}
try:
    PytorchEngineConfig(device_type="cpu")
    result["cpu_config"] = "ok"
except AssertionError as err:
    result["cpu_config"] = str(err)
try:
    PytorchEngineConfig(device_type="cuda", dtype="float32")
    result["cuda_float32"] = "ok"
except AssertionError as err:
    result["cuda_float32"] = "rejected"
if "cpu" in result["device_types"]:
    from lmdeploy.pytorch.backends.selector import get_backend
    result["cpu_backend"] = get_backend("cpu").get_name()
    result["cpu_torch_device"] = plugins.torch_device("cpu")
print(json.dumps(result))
"""


def probe(plugins_env: str | None) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "SAGELLM_PLUGINS"}
    if plugins_env is not None:
        env["SAGELLM_PLUGINS"] = plugins_env
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lmdeploy_resolves_to_patched_tree():
    import lmdeploy

    assert Path(lmdeploy.__file__).resolve().is_relative_to(REPO / "third_party" / "lmdeploy")
    assert lmdeploy.__version__ == "0.11.0"


def test_plugins_on_register_cpu_device():
    result = probe(None)
    assert result["device_types"] == ["cuda", "ascend", "maca", "camb", "cpu"]
    assert result["cpu_config"] == "ok"
    assert result["cpu_backend"] == "cpu"
    assert result["cpu_torch_device"] == "cpu"
    # built-in devices keep stock answers even with plugins on
    assert result["module_is_torch_cuda"] and result["torch_device_cuda"] == "cuda"
    assert result["cuda_float32"] == "rejected"


def test_plugins_off_is_stock_lmdeploy():
    result = probe("none")
    assert result["device_types"] == ["cuda", "ascend", "maca", "camb"]
    assert result["cpu_config"] == "invalid device_type: cpu"
    assert result["module_is_torch_cuda"] and result["torch_device_cuda"] == "cuda"
    assert result["cuda_float32"] == "rejected"


def test_install_is_idempotent():
    from sagellm.engines.lmdeploy import install
    from sagellm.engines.lmdeploy.plugin import PLUGINS

    first = install()
    assert install() == first == list(PLUGINS.names())
    assert {"api_guard", "cpu"} <= set(first)
