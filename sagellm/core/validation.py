"""Validation helpers for ``__post_init__`` methods.

Every failure is a ``ValueError`` whose message names the owner and field, the
bad value and what is accepted, e.g.::

    KVCacheSchema.block_size: got 48; accepted: a positive power of two (1, 2, 4, ... 16, 32, 64)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def invalid(owner: str, field: str, value: object, accepted: str) -> ValueError:
    """Build (not raise) the standard validation error."""
    return ValueError(f"{owner}.{field}: got {value!r}; accepted: {accepted}")


def check_choice(owner: str, field: str, value: object, choices: Collection[object]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise invalid(owner, field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_int(owner: str, field: str, value: object, *, minimum: int | None = None) -> None:
    """An int (bools rejected), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(owner, field, value, "an integer" + ("" if minimum is None else f" >= {minimum}"))
    if minimum is not None and value < minimum:
        raise invalid(owner, field, value, f"an integer >= {minimum}")


def check_positive_int(owner: str, field: str, value: object) -> None:
    check_int(owner, field, value, minimum=1)


def check_power_of_two(owner: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise invalid(owner, field, value, "a positive power of two (1, 2, 4, ... 16, 32, 64)")


def check_group_size(owner: str, granularity: str, group_size: object) -> None:
    """``group_size`` is a power of two exactly when ``granularity`` is ``per_group``, else None."""
    if granularity == "per_group":
        if group_size is None:
            raise invalid(owner, "group_size", None, "a positive power of two when granularity is 'per_group'")
        check_power_of_two(owner, "group_size", group_size)
    elif group_size is not None:
        raise invalid(owner, "group_size", group_size, "None unless granularity is 'per_group'")


def check_float(owner: str, field: str, value: object, *, positive: bool = False, minimum: float | None = None) -> None:
    """A finite real number (int accepted, bool rejected)."""
    what = "a finite number" + (" > 0" if positive else "") + ("" if minimum is None else f" >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(owner, field, value, what)
    if positive and value <= 0:
        raise invalid(owner, field, value, what)
    if minimum is not None and value < minimum:
        raise invalid(owner, field, value, what)


def check_str(owner: str, field: str, value: object, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str) or (not allow_empty and not value):
        raise invalid(owner, field, value, "a string" if allow_empty else "a non-empty string")


def coerce_enum(owner: str, field: str, value: object, enum_cls: type[E]) -> E:
    """Accept an enum member or its value; anything else raises listing the values."""
    if isinstance(value, enum_cls):
        return value
    for member in enum_cls:
        if member.value == value and not isinstance(value, bool):
            return member
    raise invalid(owner, field, value, "one of " + ", ".join(repr(m.value) for m in enum_cls))


def coerce_tuple(owner: str, field: str, value: object, elem_type: type | tuple[type, ...], what: str) -> tuple[Any, ...]:
    """Accept a list or tuple whose elements are instances of ``elem_type``; return a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise invalid(owner, field, value, f"a list of {what}")
    items = tuple(value)
    for item in items:
        if isinstance(item, bool) and bool not in (elem_type if isinstance(elem_type, tuple) else (elem_type,)):
            raise invalid(owner, field, value, f"a list of {what}")
        if not isinstance(item, elem_type):
            raise invalid(owner, field, value, f"a list of {what}")
    return items


def coerce_frozenset(owner: str, field: str, value: object, elem_type: type, what: str) -> frozenset[Any]:
    return frozenset(coerce_tuple(owner, field, value, elem_type, what))
