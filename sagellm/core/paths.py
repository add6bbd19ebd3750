"""Where sagellm keeps per-machine files (downloads, generated models, built kernels, engine records)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SAGELLM_CACHE_DIR`` or ``~/.cache/sagellm``."""
    return Path(os.environ.get("SAGELLM_CACHE_DIR") or Path.home() / ".cache" / "sagellm")
