from __future__ import annotations

import sys

from sagellm.hal import _probe


def test_missing_module_is_not_installed_and_not_imported() -> None:
    assert _probe.module_installed("torch_npu") is False
    result = _probe.import_installed("torch_npu")
    assert result.module is None and result.installed is False and result.error is None
    assert "torch_npu" not in sys.modules


def test_blocked_module_counts_as_absent(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_mlu", None)
    assert _probe.module_installed("torch_mlu") is False


def test_broken_module_reports_the_import_error(broken_module) -> None:
    broken_module("torch_npu", 'ImportError("libhccl.so: cannot open shared object file")')
    assert _probe.module_installed("torch_npu") is True
    result = _probe.import_installed("torch_npu")
    assert result.module is None and result.installed is True
    assert result.error == "ImportError: libhccl.so: cannot open shared object file"
    assert "torch_npu" not in sys.modules


def test_module_exiting_on_import_is_contained(broken_module) -> None:
    broken_module("torch_mlu", "SystemExit(1)")
    assert _probe.import_installed("torch_mlu").error == "SystemExit: 1"


def test_dlinfer_problem_without_dlinfer() -> None:
    assert _probe.dlinfer_problem("ascend") == (
        "dlinfer is not installed; LMDeploy's ascend backend needs the dlinfer ascend build"
    )


def test_dlinfer_vendor_is_read_without_importing(fake_dlinfer) -> None:
    fake_dlinfer("camb")
    assert _probe.dlinfer_built_vendor() == "camb"
    assert _probe.dlinfer_problem("camb") is None
    assert _probe.dlinfer_problem("ascend") == (
        "dlinfer is built for vendor 'camb'; LMDeploy's ascend backend needs the ascend build"
    )
    assert "dlinfer" not in sys.modules


def test_markers(monkeypatch, tmp_path) -> None:
    assert _probe.maca_marker() is None and _probe.kunlun_marker() is None
    (tmp_path / "absent-opt-maca").mkdir()
    assert _probe.maca_marker() == str(tmp_path / "absent-opt-maca")
    monkeypatch.setenv("MACA_PATH", "/usr/local/maca")
    assert _probe.maca_marker() == "MACA_PATH=/usr/local/maca"
    (tmp_path / "absent-xpuctrl").touch()
    assert _probe.kunlun_marker() == str(tmp_path / "absent-xpuctrl")
