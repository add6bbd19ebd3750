"""One ``/metrics`` for a server whose engine runs in another process.

LMDeploy's OpenAI server runs the engine in a spawned subprocess (its "mp engine"), so a
counter incremented by the scheduler lives in a different process than the HTTP route.
prometheus_client's multiprocess mode solves this: every process writes its samples to
files under ``PROMETHEUS_MULTIPROC_DIR`` and the scrape merges them. The variable must
be set before the first metric is created in any process, so the server calls
:func:`prepare_multiprocess_dir` before it imports LMDeploy; the spawned engine process
inherits it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "sagellm-metrics-"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(ENV))


def prepare_multiprocess_dir() -> Path:
    """Make sure ``PROMETHEUS_MULTIPROC_DIR`` names a directory; returns it.

    An existing setting is kept (an operator's choice, or inherited by a spawned engine
    process). Otherwise a private temporary directory is created, exported and removed
    when this process exits. If prometheus_client is already imported, its value class
    is switched to multiprocess mode; metrics created before this call stay local.
    """
    current = os.environ.get(ENV)
    if current:
        path = Path(current)
        if not path.is_dir():
            raise ValueError(f"{ENV}={current!r} is not a directory; create it or unset the variable")
        return path
    remove_stale_dirs()
    owner = os.getpid()
    path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{owner}-"))
    os.environ[ENV] = str(path)

    def cleanup() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(cleanup)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()
    return path


def remove_stale_dirs(root: Path | None = None) -> list[Path]:
    """Remove directories :func:`prepare_multiprocess_dir` made for processes that are gone.

    A server killed with SIGKILL cannot clean up after itself; its directory is named
    ``sagellm-metrics-<pid>-*`` so the next server can.
    """
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
        pid_text = path.name[len(DIR_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or not path.is_dir() or _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition_registry() -> Any:
    """The registry a scrape should read: all processes merged in multiprocess mode, else the default."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if not multiprocess_enabled():
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def render(registry: Any = None) -> bytes:
    """Prometheus text exposition of ``registry`` (default: :func:`exposition_registry`)."""
    from prometheus_client import generate_latest

    return generate_latest(registry if registry is not None else exposition_registry())
