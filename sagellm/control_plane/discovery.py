"""Where a running gateway is: ``SAGELLM_GATEWAY_URL``, else the record it writes.

``sage gateway start`` writes ``${SAGELLM_CACHE_DIR:-~/.cache/sagellm}/gateway.json`` once it
listens and removes it when it stops; records of dead processes are ignored and removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sagellm.control_plane.local_engines import _pid_alive, cache_dir
from sagellm.core.serialization import SerializableMixin

GATEWAY_URL_ENV = "SAGELLM_GATEWAY_URL"
RECORD_NAME = "gateway.json"


@dataclass(frozen=True)
class GatewayRecord(SerializableMixin):
    """A running gateway: its process, URL, start time and whether it wants an API key."""

    pid: int
    base_url: str
    started_at: float
    auth_required: bool = False


def record_path() -> Path:
    return cache_dir() / RECORD_NAME


def write_record(record: GatewayRecord) -> Path:
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RECORD_NAME}.{os.getpid()}.tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)
    return path


def read_record() -> GatewayRecord | None:
    """The recorded gateway if its process is alive; a stale or unreadable record is removed."""
    path = record_path()
    try:
        record = GatewayRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        path.unlink(missing_ok=True)
        return None
    if not _pid_alive(record.pid):
        path.unlink(missing_ok=True)
        return None
    return record


def remove_record(pid: int) -> None:
    """Remove the record if it is ``pid``'s (another gateway may have replaced it)."""
    path = record_path()
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def gateway_url() -> str:
    """The gateway's base URL (no ``/v1``).

    Raises:
        LookupError: neither ``SAGELLM_GATEWAY_URL`` nor a live record names one.
    """
    url = os.environ.get(GATEWAY_URL_ENV, "").strip()
    if url:
        return url.rstrip("/").removesuffix("/v1")
    record = read_record()
    if record is None:
        raise LookupError(
            f"no sagellm gateway found: {GATEWAY_URL_ENV} is unset and {record_path()} names no running "
            "gateway; start one with `sage gateway start`"
        )
    return record.base_url
