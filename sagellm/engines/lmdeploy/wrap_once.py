"""Wrap an LMDeploy attribute once per process, however often a plugin's install runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def wrap_once(owner: Any, name: str, marker: str, make_wrapper: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.<name>`` with ``make_wrapper(original)`` unless it is a wrapper tagged ``marker``.

    The wrapper is tagged with ``marker`` (a function attribute), so a second install leaves it as it
    is instead of wrapping the wrapper. Returns whether it wrapped.
    """
    original = getattr(owner, name)
    if getattr(original, marker, False):
        return False
    wrapper = make_wrapper(original)
    setattr(wrapper, marker, True)
    setattr(owner, name, wrapper)
    return True
