import sys
import textwrap

import pytest

from sagellm.core.registry import (
    DuplicateNameError,
    Registry,
    RegistryError,
    RegistryImportError,
    UnknownNameError,
)


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A throwaway importable package ``sagellm_regtest_pkg.impl``; removed from sys.modules afterwards."""
    pkg = tmp_path / "sagellm_regtest_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "impl.py").write_text(textwrap.dedent("""
        class Thing:
            def __init__(self, size=1):
                self.size = size

            @classmethod
            def make(cls):
                return cls(99)

        VALUE = 42
    """))
    (pkg / "broken.py").write_text("import sagellm_regtest_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "sagellm_regtest_pkg"
    for name in [m for m in sys.modules if m.startswith("sagellm_regtest_pkg")]:
        del sys.modules[name]


def test_lazy_target_is_imported_on_first_get_only(lazy_module):
    reg: Registry[type] = Registry("widget")
    reg.register("thing", f"{lazy_module}.impl:Thing")
    assert f"{lazy_module}.impl" not in sys.modules
    assert "thing" in reg and not reg.is_loaded("thing")
    assert reg.names() == ("thing",)
    assert f"{lazy_module}.impl" not in sys.modules
    cls = reg.get("thing")
    assert f"{lazy_module}.impl" in sys.modules
    assert cls.__name__ == "Thing" and reg.is_loaded("thing")
    assert reg.get("thing") is cls
    assert reg.create("thing", size=3).size == 3


def test_dotted_attribute(lazy_module):
    reg = Registry("widget")
    reg.register("factory", f"{lazy_module}.impl:Thing.make")
    assert reg.create("factory").size == 99


def test_object_and_decorator_registration():
    reg = Registry("policy")

    @reg.register("lfu")
    class LFU:
        pass

    assert reg.register("lru", dict) is dict
    assert reg.get("lfu") is LFU
    assert reg.names() == ("lfu", "lru")
    assert list(reg) == ["lfu", "lru"]
    assert len(reg) == 2
    assert reg.create("lru", a=1) == {"a": 1}


def test_duplicate_raises():
    reg = Registry("policy")
    reg.register("lru", dict)
    with pytest.raises(DuplicateNameError) as err:
        reg.register("lru", "x.y:z")
    assert str(err.value) == "policy 'lru' is already registered (as <class 'dict'>); registered names: ['lru']"
    with pytest.raises(DuplicateNameError):
        reg.register("lru")(list)
    assert reg.get("lru") is dict


def test_unknown_lists_sorted_names():
    reg = Registry("comm backend")
    for name in ("tcp", "shm", "mooncake"):
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as err:
        reg.get("rdma")
    assert str(err.value) == "unknown comm backend 'rdma'; valid names: ['mooncake', 'shm', 'tcp']"
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert isinstance(err.value, RegistryError)
    with pytest.raises(UnknownNameError):
        reg.create("rdma")
    with pytest.raises(UnknownNameError):
        reg.is_loaded("rdma")


def test_failing_import_raises_with_path_and_cause(lazy_module):
    reg = Registry("device")
    reg.register("broken", f"{lazy_module}.broken:Thing")
    reg.register("missing_attr", f"{lazy_module}.impl:Nope")
    with pytest.raises(RegistryImportError) as err:
        reg.get("broken")
    msg = str(err.value)
    assert f"device 'broken': cannot import module '{lazy_module}.broken'" in msg
    assert "ModuleNotFoundError: No module named 'sagellm_regtest_missing_dependency'" in msg
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert not reg.is_loaded("broken")  # no silent fallback: still fails next time
    with pytest.raises(RegistryImportError):
        reg.get("broken")
    with pytest.raises(RegistryImportError, match=f"module '{lazy_module}.impl' has no attribute 'Nope'"):
        reg.get("missing_attr")


def test_bad_names_and_paths():
    reg = Registry("thing")
    with pytest.raises(ValueError, match="thing name: got ''"):
        reg.register("", dict)
    with pytest.raises(ValueError, match="thing name: got 'a b'"):
        reg.register("a b", dict)
    with pytest.raises(ValueError, match=r"lazy target 'pkg.mod.Attr' is malformed; accepted: 'package.module:attr'"):
        reg.register("x", "pkg.mod.Attr")
    reg.register("v", 5)
    with pytest.raises(TypeError, match="thing 'v' is 5, which is not callable"):
        reg.create("v")
    with pytest.raises(ValueError):
        Registry("")
