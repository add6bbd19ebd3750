"""sagellm.hal: detect accelerator platforms and describe how LMDeploy 0.11 runs on them.

Importing this package imports neither torch nor any vendor module; detection does, lazily,
and only for vendor modules that are installed. See README.md for the platform table.
"""

from sagellm.hal.platforms import AUTO_PRIORITY, PLATFORMS, platform_class, platform_names
from sagellm.hal.platforms.base import Platform
from sagellm.hal.resolve import ALIASES, DEVICE_ENV, canonical_name, detect_platforms, resolve_device
from sagellm.hal.types import (
    AcceleratorDescriptor,
    PlatformInfo,
    PlatformUnavailableError,
    UnknownPlatformError,
)

__all__ = [
    "ALIASES",
    "AUTO_PRIORITY",
    "DEVICE_ENV",
    "PLATFORMS",
    "AcceleratorDescriptor",
    "Platform",
    "PlatformInfo",
    "PlatformUnavailableError",
    "UnknownPlatformError",
    "canonical_name",
    "detect_platforms",
    "platform_class",
    "platform_names",
    "resolve_device",
]
