"""``KVTransportConfig``: how KV blocks move between engines, and its named presets.

A config is chosen on the command line with ``--kv-transport``::

    --kv-transport preset=low-latency
    --kv-transport preset=high-bw,chunk_bytes=8MiB     # a preset, one field overridden
    --kv-transport backend=shm,chunk_bytes=4MiB        # defaults, fields overridden

Presets live in ``configs/kv_transport_presets.yaml`` (``SAGELLM_KV_TRANSPORT_PRESETS``
points elsewhere). Every error names the field, the bad value and what is accepted; an
unknown preset lists the valid names.

The engine server validates the choice at start and hands it to the engine process as
JSON in ``SAGELLM_KV_TRANSPORT_CONFIG`` (:func:`from_environment`), where the transport
engine reads it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sagellm.core.config import coerce_option
from sagellm.core.kv import KV_DTYPE_BITS
from sagellm.core.registry import Registry
from sagellm.core.serialization import SerializableMixin
from sagellm.core.validation import check_choice, check_int, check_str, invalid

TRANSPORT_BACKENDS: tuple[str, ...] = ("shm", "tcp", "torch_dist", "mooncake", "dlslime")
TARGET_DTYPES: tuple[str, ...] = ("auto",) + tuple(KV_DTYPE_BITS)
COMPRESSIONS: tuple[str, ...] = ("none", "lz4", "zstd")
#: Backends that can move registered buffers without a staging copy.
ZERO_COPY_BACKENDS: tuple[str, ...] = ("shm", "torch_dist", "mooncake", "dlslime")
MIN_CHUNK_BYTES = 4 * 1024
MAX_CHUNK_BYTES = 1 << 30

PRESETS_ENV = "SAGELLM_KV_TRANSPORT_PRESETS"
CONFIG_ENV = "SAGELLM_KV_TRANSPORT_CONFIG"
DEFAULT_PRESETS_FILE = Path(__file__).resolve().parents[2] / "configs" / "kv_transport_presets.yaml"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30,
}


def parse_size(value: object, what: str = "size") -> int:
    """Bytes from an int or a size string (``4MiB``, ``512KiB``, ``1GB``, ``65536``).

    Binary units are KiB/MiB/GiB, decimal ones KB/MB/GB (case-insensitive).
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: got {value!r}; accepted: a byte count or a size such as 4MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            number, unit = match.groups()
            nbytes = float(number) * _UNITS[(unit or "b").lower()]
            if nbytes.is_integer():
                return int(nbytes)
    raise ValueError(
        f"{what}: got {value!r}; accepted: a byte count or a size such as 4MiB, 512KiB, 1GB (units B, KB, MB, GB, KiB, MiB, GiB)"
    )


def format_size(nbytes: int) -> str:
    """``4194304`` -> ``4MiB``; sizes that are not whole KiB stay in bytes."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= factor and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return str(nbytes)


@dataclass(frozen=True)
class KVTransportConfig(SerializableMixin):
    """How the KV transport moves blocks.

    Attributes:
        backend: one of ``TRANSPORT_BACKENDS``.
        target_dtype: dtype on the wire; ``auto`` keeps the cache dtype, others convert.
        chunk_bytes: bytes per chunk (4 KiB .. 1 GiB).
        overlap_streams: transfers in flight at once (>= 1).
        prefetch_depth: chunks/blocks fetched ahead of use (>= 0).
        zero_copy: move registered buffers without staging copies (``ZERO_COPY_BACKENDS``
            only; excludes compression).
        compression: ``none``, ``lz4`` or ``zstd``.
        preset: the preset this config came from, None when built from fields alone.
    """

    backend: str = "shm"
    target_dtype: str = "auto"
    chunk_bytes: int = 4 << 20
    overlap_streams: int = 2
    prefetch_depth: int = 1
    zero_copy: bool = False
    compression: str = "none"
    preset: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "backend", self.backend, TRANSPORT_BACKENDS)
        check_choice(owner, "target_dtype", self.target_dtype, TARGET_DTYPES)
        check_int(owner, "chunk_bytes", self.chunk_bytes, minimum=MIN_CHUNK_BYTES)
        if self.chunk_bytes > MAX_CHUNK_BYTES:
            raise invalid(owner, "chunk_bytes", self.chunk_bytes, f"{MIN_CHUNK_BYTES} .. {MAX_CHUNK_BYTES} bytes (4KiB .. 1GiB)")
        check_int(owner, "overlap_streams", self.overlap_streams, minimum=1)
        check_int(owner, "prefetch_depth", self.prefetch_depth, minimum=0)
        if not isinstance(self.zero_copy, bool):
            raise invalid(owner, "zero_copy", self.zero_copy, "true or false")
        check_choice(owner, "compression", self.compression, COMPRESSIONS)
        if self.zero_copy and self.backend not in ZERO_COPY_BACKENDS:
            raise invalid(
                owner, "zero_copy", True, f"false with backend {self.backend!r} (zero copy needs one of {', '.join(ZERO_COPY_BACKENDS)})"
            )
        if self.zero_copy and self.compression != "none":
            raise invalid(owner, "compression", self.compression, "'none' when zero_copy is true (compressing needs a copy)")
        if self.preset is not None:
            check_str(owner, "preset", self.preset)

    @classmethod
    def from_fields(cls, data: Mapping[str, Any], *, base: KVTransportConfig | None = None, source: str = "") -> KVTransportConfig:
        """Build from plain values (strings from a CLI or YAML values) on top of ``base``.

        ``chunk_bytes`` accepts sizes (``4MiB``); booleans accept true/false/yes/no/1/0.

        Raises:
            ValueError: unknown field (listing the valid ones) or invalid value, naming ``source``.
        """
        where = f"{source}: " if source else ""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "preset"}
        hints = {"backend": str, "target_dtype": str, "chunk_bytes": int, "overlap_streams": int,
                 "prefetch_depth": int, "zero_copy": bool, "compression": str}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise ValueError(f"{where}unknown field {key!r}; valid fields: {', '.join(fields)}")
            if key == "chunk_bytes":
                values[key] = parse_size(value, f"{where}chunk_bytes")
            else:
                try:
                    values[key] = coerce_option(hints[key], value, key, source or "kv transport")
                except ValueError as exc:
                    raise ValueError(str(exc)) from None
        try:
            return dataclasses.replace(base, **values) if base is not None else cls(**values)
        except ValueError as exc:
            raise ValueError(f"{where}{exc}") from None

    def describe(self) -> str:
        """One line for logs: ``preset=low-latency backend=shm chunk=256KiB ...``."""
        head = f"preset={self.preset} " if self.preset else ""
        return (
            f"{head}backend={self.backend} target_dtype={self.target_dtype} chunk={format_size(self.chunk_bytes)} "
            f"streams={self.overlap_streams} prefetch={self.prefetch_depth} "
            f"zero_copy={'on' if self.zero_copy else 'off'} compression={self.compression}"
        )


@dataclass(frozen=True)
class TransportPreset:
    """A named ``KVTransportConfig`` from the presets file."""

    name: str
    description: str
    config: KVTransportConfig


def presets_path() -> Path:
    """The presets file: ``SAGELLM_KV_TRANSPORT_PRESETS`` or ``configs/kv_transport_presets.yaml``."""
    override = os.environ.get(PRESETS_ENV)
    return Path(override) if override else DEFAULT_PRESETS_FILE


def load_presets(path: str | os.PathLike[str] | None = None) -> Registry[TransportPreset]:
    """Read and validate every preset of the file; each must set every field.

    Raises:
        ValueError: unreadable file, bad YAML, a missing/unknown field or invalid value
            (naming the file and the preset).
    """
    file = Path(path) if path is not None else presets_path()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"KV transport presets {str(file)!r}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"KV transport presets {str(file)!r}: invalid YAML: {exc}") from exc
    if not isinstance(data, Mapping) or not isinstance(data.get("presets"), Mapping) or not data["presets"]:
        raise ValueError(f"KV transport presets {str(file)!r}: expected a non-empty mapping under 'presets'")
    required = [f.name for f in dataclasses.fields(KVTransportConfig) if f.name != "preset"]
    registry: Registry[TransportPreset] = Registry("kv transport preset")
    for name, body in data["presets"].items():
        source = f"{file} preset {name!r}"
        if not isinstance(body, Mapping):
            raise ValueError(f"{source}: expected a mapping of fields")
        fields = dict(body)
        description = fields.pop("description", "")
        missing = [key for key in required if key not in fields]
        if missing:
            raise ValueError(f"{source}: missing field(s) {', '.join(missing)}; a preset sets every field: {', '.join(required)}")
        config = KVTransportConfig.from_fields(fields, source=source)
        registry.register(str(name), TransportPreset(str(name), " ".join(str(description).split()), dataclasses.replace(config, preset=str(name))))
    return registry


def get_preset(name: str, path: str | os.PathLike[str] | None = None) -> TransportPreset:
    """The preset ``name``; an unknown name raises ``UnknownNameError`` listing the valid names."""
    return load_presets(path).get(name)


def parse_kv_transport(spec: str, *, presets_file: str | os.PathLike[str] | None = None) -> KVTransportConfig:
    """Parse a ``--kv-transport`` value: comma-separated ``key=value`` pairs.

    ``preset=NAME`` starts from that preset (fields given beside it override it); without
    it the ``KVTransportConfig`` defaults are the base.

    Raises:
        ValueError: empty spec, a pair without ``=``, a repeated key, an unknown field,
            an invalid value, or an unknown preset (listing the valid names).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--kv-transport: got an empty value; accepted: preset=NAME or field=value pairs such as backend=shm,chunk_bytes=4MiB")
    pairs: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"--kv-transport: {item!r} is not key=value; accepted: preset=NAME or field=value pairs")
        if key in pairs:
            raise ValueError(f"--kv-transport: {key!r} given twice")
        pairs[key] = value
    base = None
    if "preset" in pairs:
        base = get_preset(pairs.pop("preset"), presets_file).config
    return KVTransportConfig.from_fields(pairs, base=base, source="--kv-transport")


def to_environment(config: KVTransportConfig) -> dict[str, str]:
    """The variables that hand ``config`` to the engine process."""
    return {CONFIG_ENV: config.to_json()}


def from_environment(environ: Mapping[str, str] | None = None) -> KVTransportConfig | None:
    """The config the server chose (``SAGELLM_KV_TRANSPORT_CONFIG``), None when none was."""
    text = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if not text:
        return None
    try:
        return KVTransportConfig.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{CONFIG_ENV}: {exc}") from exc
