"""One serialization mixin for every core dataclass.

``SerializableMixin`` gives a dataclass ``to_dict/from_dict``, ``to_json/from_json``
and ``to_yaml/from_yaml``. Encoding is driven by the value, decoding by the
field's type hint:

==================  =========================  ==================================
type hint           encoded as                 decoded from
==================  =========================  ==================================
nested dataclass    dict                       mapping (recursively, strict keys)
``Enum``            its ``.value``             the value (or a member)
``tuple``/``list``  list                       list or tuple
``frozenset/set``   list, sorted               list, tuple or set
``bytes``           lowercase hex string       hex string or bytes
``Optional[X]``     ``None`` or X's encoding   ``None`` or X
``dict[K, V]``      dict                       mapping
==================  =========================  ==================================

``from_dict`` rejects unknown keys (listing the valid ones) and missing required
keys. Only ``init=True`` fields are serialized; the dataclass's own
``__post_init__`` validates the decoded values.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

import yaml

from sagellm.core._typing import (
    NoneType,
    describe_type,
    field_types,
    init_fields,
    is_dataclass_type,
    is_enum_type,
    is_union,
)

S = TypeVar("S", bound="SerializableMixin")


class SerializationError(ValueError):
    """A value could not be decoded into the declared type; the message names its path."""


def encode(value: Any) -> Any:
    """Turn a value made of dataclasses, enums, tuples, sets and bytes into plain JSON/YAML data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in init_fields(type(value))}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, (set, frozenset)):
        encoded = [encode(v) for v in value]
        return sorted(encoded, key=lambda v: (type(v).__name__, json.dumps(v, sort_keys=True, default=str)))
    if isinstance(value, Mapping):
        return {encode(k): encode(v) for k, v in value.items()}
    return value


def decode(tp: Any, value: Any, path: str) -> Any:
    """Decode plain data ``value`` into type ``tp``; ``path`` names the value in errors."""

    def fail() -> SerializationError:
        return SerializationError(f"{path}: got {value!r}; accepted: {describe_type(tp)}")

    if tp is Any:
        return value
    if is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if NoneType in args:
                return None
            raise fail()
        errors = []
        for arg in args:
            if arg is NoneType:
                continue
            try:
                return decode(arg, value, path)
            except SerializationError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise fail()
    if is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise fail()
        return _dataclass_from_mapping(tp, value, path)
    if is_enum_type(tp):
        if isinstance(value, tp):
            return value
        for member in tp:
            if member.value == value and not isinstance(value, bool):
                return member
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if tp is bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str):
            try:
                return bytes.fromhex(value)
            except ValueError:
                raise fail() from None
        raise fail()

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        if value in args:
            return value
        raise fail()
    if origin in (list, tuple, set, frozenset):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, set, frozenset)):
            raise fail()
        items = list(value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise SerializationError(f"{path}: got {len(items)} items; accepted: exactly {len(args)}")
            return tuple(decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
        elem = args[0] if args else Any
        decoded = [decode(elem, v, f"{path}[{i}]") for i, v in enumerate(items)]
        return origin(decoded)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise fail()
        ktype, vtype = args if args else (Any, Any)
        return {decode(ktype, k, f"{path} key"): decode(vtype, v, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail()


def _dataclass_from_mapping(cls: type, data: Mapping[str, Any], path: str) -> Any:
    fields = init_fields(cls)
    valid = [f.name for f in fields]
    unknown = sorted(str(k) for k in data if k not in valid)
    if unknown:
        raise SerializationError(f"{path}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(valid)}")
    hints = field_types(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name in data:
            kwargs[f.name] = decode(hints[f.name], data[f.name], f"{path}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SerializationError(f"{path}: missing required key {f.name!r} for {cls.__name__}")
    return cls(**kwargs)


class SerializableMixin:
    """Adds dict/JSON/YAML round-tripping to a dataclass (see the module docstring)."""

    def to_dict(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        if not isinstance(data, Mapping):
            raise SerializationError(f"{cls.__name__}: got {data!r}; accepted: a mapping")
        return _dataclass_from_mapping(cls, data, cls.__name__)

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls: type[S], text: str) -> S:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SerializationError(f"{cls.__name__}: invalid JSON: {exc}") from exc
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[S], text: str) -> S:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SerializationError(f"{cls.__name__}: invalid YAML: {exc}") from exc
        return cls.from_dict(data)
