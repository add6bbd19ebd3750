from __future__ import annotations

import json

from typer.testing import CliRunner

from sagellm.cli.infer import app

runner = CliRunner()


def _rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines() if line.strip()}


def test_backends_list_table_has_cpu_row(no_cuda) -> None:
    result = runner.invoke(app, ["backends", "list"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert rows["name"] == ["name", "usable", "devices", "memory", "dtypes", "device_type", "collective", "reason"]
    cpu = rows["cpu"]
    assert cpu[1:3] == ["yes", "1"]
    assert cpu[3].endswith("GiB")
    assert cpu[4:7] == ["float32,bfloat16,float16", "cpu", "gloo"]
    assert list(rows) == ["name", "cuda", "ascend", "camb", "maca", "kunlun", "cpu"]
    assert "torch_npu is not installed" in result.output


def test_backends_list_shows_stubbed_ascend(no_cuda, fake_torch_npu, fake_dlinfer) -> None:
    fake_torch_npu(count=8)
    fake_dlinfer("ascend")
    rows = _rows(runner.invoke(app, ["backends", "list"]).output)
    assert rows["ascend"] == ["ascend", "yes", "8", "8x64.0GiB", "float16,bfloat16,float32", "ascend", "hccl"]


def test_backends_list_json(no_cuda) -> None:
    result = runner.invoke(app, ["backends", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [d["platform"] for d in data] == ["cuda", "ascend", "camb", "maca", "kunlun", "cpu"]
    cpu = data[-1]
    assert cpu["usable"] is True and cpu["reason"] is None and cpu["lmdeploy_device_type"] == "cpu"
    assert data[1]["reason"] == "torch_npu is not installed"
