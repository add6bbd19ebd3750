"""Records of engines started on this machine, so `sage llm engine list/stop` can find them."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sagellm.core.paths import cache_root


def cache_dir() -> Path:
    return cache_root()


def engines_dir() -> Path:
    return cache_dir() / "engines"


@dataclass(frozen=True)
class LocalEngineRecord:
    pid: int
    engine_kind: str
    model: str
    device: str
    base_url: str
    started_at: float

    @property
    def engine_id(self) -> str:
        return f"{self.engine_kind}-{self.pid}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record(entry: LocalEngineRecord) -> Path:
    path = engines_dir() / f"{entry.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(entry)))
    tmp.replace(path)
    return path


def forget(pid: int) -> None:
    (engines_dir() / f"{pid}.json").unlink(missing_ok=True)


def running() -> list[LocalEngineRecord]:
    """Live engines; records of dead processes are removed."""
    entries = []
    for path in sorted(engines_dir().glob("*.json")):
        try:
            entry = LocalEngineRecord(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if _pid_alive(entry.pid):
            entries.append(entry)
        else:
            path.unlink(missing_ok=True)
    return entries


def stop(engine: str, timeout_s: float = 30.0) -> LocalEngineRecord:
    """Stop an engine by id (``kind-pid``) or pid; SIGTERM, then SIGKILL after ``timeout_s``."""
    entries = running()
    match = [e for e in entries if engine in (e.engine_id, str(e.pid))]
    if not match:
        known = ", ".join(e.engine_id for e in entries) or "none running"
        raise LookupError(f"no running engine {engine!r}; running: {known}")
    entry = match[0]
    os.kill(entry.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(entry.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(entry.pid):
        os.kill(entry.pid, signal.SIGKILL)
    forget(entry.pid)
    return entry
