"""Platform listing and selection: ``detect_platforms()`` and ``resolve_device()``."""

from __future__ import annotations

import os
from collections.abc import Iterable

from sagellm.hal.platforms import AUTO_PRIORITY, PLATFORMS, platform_class, platform_names
from sagellm.hal.types import AcceleratorDescriptor, PlatformUnavailableError, UnknownPlatformError

#: Environment override for ``resolve_device("auto")`` (an explicit argument wins over it).
DEVICE_ENV = "SAGELLM_DEVICE"
AUTO = "auto"
#: Other spellings users type for a platform.
ALIASES: dict[str, str] = {"npu": "ascend", "mlu": "camb", "dcu": "cuda", "rocm": "cuda", "metax": "maca"}
FALLBACK = "cpu"


def detect_platforms(names: Iterable[str] | None = None) -> list[AcceleratorDescriptor]:
    """Describe every registered platform (or ``names``), usable or not.

    Order: the ``auto`` priority (cuda, ascend, camb, maca, kunlun), then cpu, then any
    other registered platform. Each call detects afresh; nothing is cached.
    """
    selected = platform_names() if names is None else [canonical_name(n) for n in names]
    return [platform_class(name).describe() for name in selected]


def canonical_name(name: str) -> str:
    """The registered platform ``name`` refers to (aliases resolved); raises for unknown names."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PLATFORMS:
        raise UnknownPlatformError(
            f"unknown platform {name!r}; valid: {AUTO}, {', '.join(platform_names())} "
            f"(aliases: {', '.join(f'{a}={t}' for a, t in sorted(ALIASES.items()))})"
        )
    return key


def resolve_device(requested: str = AUTO) -> AcceleratorDescriptor:
    """The platform to run on.

    Args:
        requested: a platform name, an alias, or ``"auto"``. With ``"auto"`` the env var
            ``SAGELLM_DEVICE`` is consulted first; if it is unset (or ``auto`` too), the first
            usable platform in ``AUTO_PRIORITY`` is chosen, else cpu.

    Returns:
        The descriptor of the chosen platform (usable).

    Raises:
        UnknownPlatformError: the name is not registered (the message lists valid names).
        PlatformUnavailableError: the platform was asked for explicitly (argument or env)
            but is not usable here; the message carries the detector's reason.
    """
    source = "requested"
    name = requested.strip().lower()
    if name == AUTO:
        env_value = os.environ.get(DEVICE_ENV, "").strip().lower()
        if env_value and env_value != AUTO:
            name, source = env_value, f"{DEVICE_ENV}={env_value}"
    if name == AUTO:
        return _auto()
    descriptor = platform_class(canonical_name(name)).describe()
    if not descriptor.usable:
        raise PlatformUnavailableError(
            descriptor,
            f"platform {descriptor.platform!r} ({source}) is not usable: {descriptor.reason}. "
            f"Usable here: {', '.join(_usable_names()) or 'none'}",
        )
    return descriptor


def _auto() -> AcceleratorDescriptor:
    for name in AUTO_PRIORITY:
        descriptor = platform_class(name).describe()
        if descriptor.usable:
            return descriptor
    return platform_class(FALLBACK).describe()


def _usable_names() -> list[str]:
    return [d.platform for d in detect_platforms() if d.usable]
