"""Run ``git`` and GNU ``patch`` with a predictable environment.

User and system git configuration is ignored (no signing hooks, no custom diff
settings), and git never discovers a repository above a tree we patch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from sagellm.patchkit.errors import PatchkitError, ToolMissingError

IDENTITY_NAME = "sagellm patchkit"
IDENTITY_EMAIL = "patchkit@sagellm.invalid"
FIXED_DATE = "2000-01-01T00:00:00+00:00"


def require(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        hint = "install GNU patch (apt-get install patch)" if tool == "patch" else f"install {tool}"
        raise ToolMissingError(f"{tool!r} was not found on PATH; {hint}")
    return found


def git_env(ceiling: Path | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_COMMITTER_NAME=IDENTITY_NAME,
        GIT_COMMITTER_EMAIL=IDENTITY_EMAIL,
        GIT_AUTHOR_NAME=IDENTITY_NAME,
        GIT_AUTHOR_EMAIL=IDENTITY_EMAIL,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    if ceiling is not None:
        env["GIT_CEILING_DIRECTORIES"] = str(ceiling.resolve())
    return env


def git(
    args: Sequence[str],
    cwd: Path,
    *,
    check: bool = True,
    ceiling: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git args`` in ``cwd``; with ``check``, a failure raises naming the command and its stderr."""
    command = [require("git"), "-c", "init.defaultBranch=main", "-c", "core.autocrlf=false", *args]
    full_env = git_env(ceiling)
    full_env.update(env or {})
    proc = subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise PatchkitError(
            f"git {' '.join(args)} failed in {cwd} (exit {proc.returncode}):\n{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def gnu_patch(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run GNU ``patch`` (never interactive, no backup files)."""
    command = [require("patch"), "--batch", "--no-backup-if-mismatch", *args]
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
