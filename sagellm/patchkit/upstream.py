"""The ``UPSTREAM`` pin file: which upstream release the series is written against.

Format: ``key=value`` lines, ``#`` comments and blank lines ignored::

    package=lmdeploy
    version=0.11.0
    source=pypi
    artifact=lmdeploy-0.11.0-cp311-cp311-manylinux2014_x86_64.whl
    sha256=<64 hex digits>
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sagellm.patchkit.errors import ConfigError

REQUIRED_KEYS = ("package", "version", "source", "artifact", "sha256")
SUPPORTED_SOURCES = ("pypi",)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")
_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class WheelName:
    """The parts of a wheel file name (PEP 427)."""

    distribution: str
    version: str
    python_tag: str
    abi_tag: str
    platform_tags: tuple[str, ...]

    @property
    def python_version(self) -> str:
        """``cp311`` -> ``3.11`` (the form ``pip download --python-version`` takes)."""
        match = re.match(r"^(?:cp|py)(\d)(\d+)$", self.python_tag.split(".")[0])
        if not match:
            raise ConfigError(f"cannot derive a Python version from wheel tag {self.python_tag!r}")
        return f"{match.group(1)}.{match.group(2)}"


def parse_wheel_name(filename: str) -> WheelName:
    if not filename.endswith(".whl"):
        raise ConfigError(f"artifact {filename!r} is not a wheel (.whl); set artifact= to the wheel's file name")
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise ConfigError(
            f"artifact {filename!r} is not a valid wheel name (expected NAME-VERSION[-BUILD]-PY-ABI-PLATFORM.whl)"
        )
    dist, version = parts[0], parts[1]
    py, abi, plat = parts[-3:]
    return WheelName(dist, version, py, abi, tuple(plat.split(".")))


@dataclass(frozen=True)
class UpstreamPin:
    """Parsed ``UPSTREAM`` file."""

    package: str
    version: str
    source: str
    artifact: str
    sha256: str
    path: Path | None = None

    @property
    def wheel(self) -> WheelName:
        return parse_wheel_name(self.artifact)

    @property
    def tag(self) -> str:
        """Git tag the pristine tree gets in a workspace."""
        return f"upstream-{self.version}"

    def render(self, header: str = "") -> str:
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        lines += [f"{key}={getattr(self, key)}" for key in REQUIRED_KEYS]
        return "\n".join(lines) + "\n"


def parse_upstream(text: str, path: Path | None = None) -> UpstreamPin:
    where = str(path) if path else "UPSTREAM"
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"{where}:{number}: expected key=value, got {raw!r}")
        key, value = (part.strip() for part in line.split("=", 1))
        if key not in REQUIRED_KEYS:
            raise ConfigError(f"{where}:{number}: unknown key {key!r}; valid keys: {', '.join(REQUIRED_KEYS)}")
        if key in values:
            raise ConfigError(f"{where}:{number}: key {key!r} is set twice")
        values[key] = value
    missing = [key for key in REQUIRED_KEYS if not values.get(key)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}; every UPSTREAM needs {', '.join(REQUIRED_KEYS)}")
    pin = UpstreamPin(path=path, **values)
    _validate(pin, where)
    return pin


def _validate(pin: UpstreamPin, where: str) -> None:
    if not _PACKAGE.match(pin.package):
        raise ConfigError(f"{where}: package={pin.package!r} is not an importable package name")
    if not _VERSION.match(pin.version):
        raise ConfigError(f"{where}: version={pin.version!r} is not a release version like 0.11.0")
    if pin.source not in SUPPORTED_SOURCES:
        raise ConfigError(f"{where}: source={pin.source!r} is not supported; use one of {', '.join(SUPPORTED_SOURCES)}")
    if not _SHA256.match(pin.sha256):
        raise ConfigError(f"{where}: sha256={pin.sha256!r} must be 64 lowercase hex digits")
    wheel = parse_wheel_name(pin.artifact)
    if wheel.distribution.lower().replace("-", "_") != pin.package.lower() or wheel.version != pin.version:
        raise ConfigError(
            f"{where}: artifact={pin.artifact!r} does not belong to {pin.package}=={pin.version}; "
            f"expected a name starting with {pin.package}-{pin.version}-"
        )


def read_upstream(path: Path) -> UpstreamPin:
    if not path.is_file():
        raise ConfigError(f"UPSTREAM file not found: {path} (it pins the upstream release; see patches/README.md)")
    return parse_upstream(path.read_text(encoding="utf-8"), path)
