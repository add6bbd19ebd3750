"""wrap_once: one wrapper however often a plugin installs, tagged so that it is recognised."""

from __future__ import annotations

import functools

from sagellm.engines.lmdeploy.wrap_once import wrap_once


def test_wraps_once_and_tags_the_wrapper():
    class Owner:
        def double(self, x):
            return 2 * x

    def add_one(method):
        @functools.wraps(method)
        def wrapper(self, x):
            return method(self, x) + 1

        return wrapper

    original = Owner.double
    assert wrap_once(Owner, "double", "__tag__", add_one) is True
    assert wrap_once(Owner, "double", "__tag__", add_one) is False
    assert Owner().double(3) == 7  # wrapped once, not twice
    assert Owner.double.__wrapped__ is original and Owner.double.__tag__ is True
    assert wrap_once(Owner, "double", "__other__", add_one) is True  # another plugin's marker stacks
    assert Owner().double(3) == 8
