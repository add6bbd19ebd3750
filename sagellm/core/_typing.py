"""Small helpers for reading type hints; shared by serialization and config loading."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from enum import Enum
from typing import Any, Union

NoneType = type(None)


def is_dataclass_type(tp: object) -> bool:
    """True for a dataclass *class* (not an instance)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def is_enum_type(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, Enum)


def is_union(tp: object) -> bool:
    origin = typing.get_origin(tp)
    return origin is Union or origin is types.UnionType


def optional_inner(tp: object) -> object | None:
    """For ``Optional[X]`` return ``X``; for anything else return None.

    A union of several non-None types is not an Optional and returns None.
    """
    if not is_union(tp):
        return None
    args = [a for a in typing.get_args(tp) if a is not NoneType]
    if len(args) == len(typing.get_args(tp)) or len(args) != 1:
        return None
    return args[0]


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (string annotations evaluated)."""
    return typing.get_type_hints(cls)


def init_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields a dataclass accepts in ``__init__`` (the ones that are serialized)."""
    return tuple(f for f in dataclasses.fields(cls) if f.init)


def describe_type(tp: object) -> str:
    """A short human description of what a type accepts, for error messages."""
    inner = optional_inner(tp)
    if inner is not None:
        return f"{describe_type(inner)} or null"
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is bytes:
        return "bytes (hex string when serialized)"
    if is_enum_type(tp):
        return "one of " + ", ".join(repr(m.value) for m in tp)  # type: ignore[union-attr]
    if is_dataclass_type(tp):
        return f"a mapping for {tp.__name__}"  # type: ignore[union-attr]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        elem = args[0] if args else Any
        return f"a list of items, each {describe_type(elem)}"
    if origin is dict:
        return "a mapping"
    if is_union(tp):
        return " or ".join(describe_type(a) for a in args)
    return getattr(tp, "__name__", str(tp))
