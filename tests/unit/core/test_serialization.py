from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import pytest
import yaml

from sagellm.core.serialization import SerializableMixin, SerializationError


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner(SerializableMixin):
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Outer(SerializableMixin):
    inner: Inner
    color: Color = Color.RED
    sizes: tuple[int, ...] = ()
    pair: tuple[str, int] = ("a", 1)
    tags: frozenset[str] = frozenset()
    digest: bytes = b""
    maybe: Optional[Inner] = None
    counts: dict[str, int] = field(default_factory=dict)
    children: list[Inner] = field(default_factory=list)


def make() -> Outer:
    return Outer(
        inner=Inner("x", 2.5),
        color=Color.BLUE,
        sizes=(1, 2, 3),
        pair=("b", 7),
        tags=frozenset({"zeta", "alpha"}),
        digest=b"\x00\xffab",
        maybe=Inner("y"),
        counts={"k": 3},
        children=[Inner("c1"), Inner("c2", 0.5)],
    )


def test_to_dict_exact_encoding():
    assert make().to_dict() == {
        "inner": {"name": "x", "weight": 2.5},
        "color": "blue",
        "sizes": [1, 2, 3],
        "pair": ["b", 7],
        "tags": ["alpha", "zeta"],
        "digest": "00ff6162",
        "maybe": {"name": "y", "weight": 1.0},
        "counts": {"k": 3},
        "children": [{"name": "c1", "weight": 1.0}, {"name": "c2", "weight": 0.5}],
    }


@pytest.mark.parametrize("dump,load", [
    (lambda o: o.to_dict(), Outer.from_dict),
    (lambda o: o.to_json(), Outer.from_json),
    (lambda o: o.to_yaml(), Outer.from_yaml),
])
def test_round_trips(dump, load):
    original = make()
    restored = load(dump(original))
    assert restored == original
    assert isinstance(restored.sizes, tuple)
    assert isinstance(restored.tags, frozenset)
    assert restored.color is Color.BLUE
    assert restored.digest == b"\x00\xffab"


def test_optional_none_and_defaults_round_trip():
    o = Outer(inner=Inner("only"))
    assert Outer.from_json(o.to_json()) == o
    assert o.to_dict()["maybe"] is None


def test_json_and_yaml_are_plain_data():
    assert json.loads(make().to_json())["color"] == "blue"
    assert yaml.safe_load(make().to_yaml())["sizes"] == [1, 2, 3]


def test_unknown_key_lists_valid_keys():
    with pytest.raises(SerializationError) as err:
        Inner.from_dict({"name": "x", "wieght": 2})
    assert str(err.value) == "Inner: unknown key(s) ['wieght'] for Inner; valid keys: ['name', 'weight']"


def test_unknown_key_in_nested_mapping_names_the_path():
    with pytest.raises(SerializationError, match=r"Outer\.inner: unknown key\(s\) \['bogus'\]"):
        Outer.from_dict({"inner": {"name": "x", "bogus": 1}})


def test_missing_required_key():
    with pytest.raises(SerializationError, match="missing required key 'name' for Inner"):
        Inner.from_dict({"weight": 1.0})


def test_wrong_types_name_path_and_accepted():
    with pytest.raises(SerializationError) as err:
        Outer.from_dict({"inner": {"name": "x"}, "color": "green"})
    assert str(err.value) == "Outer.color: got 'green'; accepted: one of 'red', 'blue'"
    with pytest.raises(SerializationError, match=r"Outer.sizes\[1\]: got 'two'; accepted: an integer"):
        Outer.from_dict({"inner": {"name": "x"}, "sizes": [1, "two"]})
    with pytest.raises(SerializationError, match=r"Outer.pair: got 3 items; accepted: exactly 2"):
        Outer.from_dict({"inner": {"name": "x"}, "pair": ["a", 1, 2]})
    with pytest.raises(SerializationError, match="Outer.digest"):
        Outer.from_dict({"inner": {"name": "x"}, "digest": "not-hex"})


def test_bool_is_not_an_int_and_int_becomes_float():
    with pytest.raises(SerializationError):
        Outer.from_dict({"inner": {"name": "x"}, "sizes": [True]})
    assert Inner.from_dict({"name": "x", "weight": 3}).weight == 3.0


def test_non_mapping_and_bad_text():
    with pytest.raises(SerializationError, match="accepted: a mapping"):
        Inner.from_dict(["name"])  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="invalid JSON"):
        Inner.from_json("{")
    with pytest.raises(SerializationError, match="accepted: a mapping"):
        Inner.from_yaml("- a\n- b\n")
