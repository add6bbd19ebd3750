"""Read a wheel's metadata and extract one Python package from it."""

from __future__ import annotations

import fnmatch
import stat
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path, PurePosixPath

from sagellm.patchkit.errors import ConfigError

# Prebuilt native libraries that the PyTorch engine does not need (TurboMind, bundled xgrammar).
NATIVE_LIB_PATTERNS: tuple[str, ...] = ("lib/*.so",)


@dataclass(frozen=True)
class WheelMetadata:
    """What the generated ``pyproject.toml`` needs from the wheel's ``.dist-info``."""

    name: str
    version: str
    summary: str
    requires_python: str
    console_scripts: tuple[tuple[str, str], ...]  # (command, "module:function")


@dataclass(frozen=True)
class ExtractResult:
    files: int
    skipped: tuple[str, ...]  # members left out (native libraries)


def _dist_info(names: list[str]) -> str:
    tops = sorted({name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")})
    if len(tops) != 1:
        raise ConfigError(f"expected exactly one .dist-info folder in the wheel, found {tops or 'none'}")
    return tops[0]


def _console_scripts(text: str) -> tuple[tuple[str, str], ...]:
    scripts: list[tuple[str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "console_scripts" and "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            scripts.append((name, target))
    return tuple(scripts)


def read_metadata(wheel_path: Path) -> WheelMetadata:
    with zipfile.ZipFile(wheel_path) as archive:
        names = archive.namelist()
        info = _dist_info(names)
        meta = Parser().parsestr(archive.read(f"{info}/METADATA").decode("utf-8"), headersonly=True)
        entry_points = f"{info}/entry_points.txt"
        scripts = _console_scripts(archive.read(entry_points).decode("utf-8")) if entry_points in names else ()
    return WheelMetadata(
        name=meta.get("Name", ""),
        version=meta.get("Version", ""),
        summary=meta.get("Summary", "") or "",
        requires_python=meta.get("Requires-Python", "") or "",
        console_scripts=scripts,
    )


def is_native_lib(relative: str) -> bool:
    """``relative`` is a path below the package folder (``lib/_turbomind....so``)."""
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in NATIVE_LIB_PATTERNS) and relative.count("/") == 1


def extract_package(wheel_path: Path, package: str, dest: Path, keep_native_libs: bool) -> ExtractResult:
    """Extract ``<package>/`` from the wheel into ``dest/<package>/``.

    Native libraries under ``<package>/lib/`` are skipped unless ``keep_native_libs``.
    """
    prefix = f"{package}/"
    files = 0
    skipped: list[str] = []
    with zipfile.ZipFile(wheel_path) as archive:
        for member in archive.infolist():
            name = member.filename
            if not name.startswith(prefix) or member.is_dir():
                continue
            pure = PurePosixPath(name)
            if pure.is_absolute() or ".." in pure.parts:
                raise ConfigError(f"refusing unsafe path {name!r} in {wheel_path}")
            if not keep_native_libs and is_native_lib(name[len(prefix) :]):
                skipped.append(name)
                continue
            target = dest.joinpath(*pure.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                while block := source.read(1 << 20):
                    sink.write(block)
            mode = (member.external_attr >> 16) & 0o777
            target.chmod(0o755 if mode & stat.S_IXUSR else 0o644)
            files += 1
    if files == 0:
        raise ConfigError(f"{wheel_path} contains no {prefix} package; check package= in UPSTREAM")
    return ExtractResult(files=files, skipped=tuple(skipped))
