"""``Registry[T]``: a strict, lazy name -> object table.

Strict: registering a name twice raises ``DuplicateNameError``; asking for an
unknown name raises ``UnknownNameError`` listing the valid names; an entry whose
lazy import fails raises ``RegistryImportError`` with the import path and the
original error -- there is no fallback to another entry.

Lazy: a target may be a ``"package.module:attr"`` string (``attr`` may be dotted,
``"pkg.mod:Class.factory"``). The module is imported on the first ``get`` of
that name and the result cached, so vendor stacks (torch_npu, mooncake, dlinfer)
load only when selected::

    KV_POLICIES: Registry[type[EvictionPolicy]] = Registry("kv policy")
    KV_POLICIES.register("lru", "sagellm.kv_policy.lru:LRUPolicy")

    @KV_POLICIES.register("lfu")
    class LFUPolicy: ...

    policy = KV_POLICIES.create("lru", capacity=128)
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
_Obj = TypeVar("_Obj")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_LAZY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class RegistryError(Exception):
    """Base of every registry error."""


class DuplicateNameError(RegistryError, ValueError):
    """A name was registered twice."""


class UnknownNameError(RegistryError, KeyError, ValueError):
    """A name is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RegistryImportError(RegistryError, ImportError):
    """A lazily registered target could not be imported; the cause is chained."""


class _Lazy:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"lazy({self.path!r})"


_MISSING = object()


class Registry(Generic[T]):
    """Name -> target table; targets are objects or lazy ``"module:attr"`` strings.

    Args:
        kind: what the entries are, used in error messages ("kv policy", "comm backend").
    """

    def __init__(self, kind: str) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Registry.kind: got {kind!r}; accepted: a non-empty string")
        self.kind = kind
        self._entries: dict[str, T | _Lazy] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self.names())})"

    @overload
    def register(self, name: str) -> Callable[[_Obj], _Obj]: ...

    @overload
    def register(self, name: str, target: T | str) -> T | str: ...

    def register(self, name: str, target: Any = _MISSING) -> Any:
        """Register ``target`` under ``name``; without ``target``, return a decorator.

        A string target must look like ``"package.module:attr"`` and is imported on
        first ``get``. Returns the target (or, as a decorator, the decorated object).

        Raises:
            ValueError: bad name or malformed lazy path.
            DuplicateNameError: ``name`` is already registered.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"{self.kind} name: got {name!r}; accepted: letters, digits, '_', '-', '.' "
                f"(starting with a letter or digit)"
            )
        if target is _MISSING:

            def decorator(obj: _Obj) -> _Obj:
                self._add(name, obj)
                return obj

            return decorator
        if isinstance(target, str):
            if not _LAZY_RE.match(target):
                raise ValueError(
                    f"{self.kind} {name!r}: lazy target {target!r} is malformed; accepted: 'package.module:attr'"
                )
            self._add(name, _Lazy(target))
        else:
            self._add(name, target)
        return target

    def _add(self, name: str, entry: Any) -> None:
        with self._lock:
            if name in self._entries:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is already registered (as {self._entries[name]!r}); "
                    f"registered names: {list(self.names())}"
                )
            self._entries[name] = entry

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def is_loaded(self, name: str) -> bool:
        """False while ``name`` is a lazy entry not yet imported."""
        return not isinstance(self._lookup(name), _Lazy)

    def _lookup(self, name: str) -> T | _Lazy:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {list(self.names())}"
            ) from None

    def get(self, name: str) -> T:
        """The target registered as ``name``, importing a lazy one on first use.

        Raises:
            UnknownNameError: ``name`` is not registered.
            RegistryImportError: the lazy module or attribute could not be imported.
        """
        entry = self._lookup(name)
        if not isinstance(entry, _Lazy):
            return entry
        with self._lock:
            entry = self._entries[name]
            if isinstance(entry, _Lazy):
                resolved = self._import(name, entry.path)
                self._entries[name] = resolved
                return resolved
            return entry

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the target registered as ``name`` (a class or factory) with the arguments."""
        target = self.get(name)
        if not callable(target):
            raise TypeError(f"{self.kind} {name!r} is {target!r}, which is not callable")
        return target(*args, **kwargs)

    def _import(self, name: str, path: str) -> Any:
        module_path, attr_path = path.split(":", 1)
        try:
            obj: Any = importlib.import_module(module_path)
        except Exception as exc:
            raise RegistryImportError(
                f"{self.kind} {name!r}: cannot import module {module_path!r} (from {path!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise RegistryImportError(
                    f"{self.kind} {name!r}: module {module_path!r} has no attribute {attr_path!r} "
                    f"(from {path!r}): {exc}"
                ) from exc
        return obj
