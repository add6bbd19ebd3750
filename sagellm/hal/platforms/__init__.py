"""The platform registry: name -> detector class path, imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sagellm.core.registry import Registry

if TYPE_CHECKING:
    from sagellm.hal.platforms.base import Platform

#: ``resolve_device("auto")`` tries these in order and falls back to cpu.
AUTO_PRIORITY: tuple[str, ...] = ("cuda", "ascend", "camb", "maca", "kunlun")

PLATFORMS: Registry[type[Platform]] = Registry("platform")
for _name, _target in {
    "cuda": "sagellm.hal.platforms.cuda:CudaPlatform",
    "ascend": "sagellm.hal.platforms.ascend:AscendPlatform",
    "camb": "sagellm.hal.platforms.camb:CambPlatform",
    "maca": "sagellm.hal.platforms.maca:MacaPlatform",
    "kunlun": "sagellm.hal.platforms.kunlun:KunlunPlatform",
    "cpu": "sagellm.hal.platforms.cpu:CpuPlatform",
}.items():
    PLATFORMS.register(_name, _target)


def platform_class(name: str) -> type[Platform]:
    """The detector class registered as ``name`` (imported on first use)."""
    return PLATFORMS.get(name)


def platform_names() -> list[str]:
    """Registered platforms: the auto priority, then cpu, then any others in registration order."""
    names = PLATFORMS.names()
    head = [n for n in (*AUTO_PRIORITY, "cpu") if n in names]
    return head + [n for n in names if n not in head]
