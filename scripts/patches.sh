#!/usr/bin/env bash
# Every patchkit command (apply, check, reverse, clean, lint, workspace, export, rebase, compat)
# without needing the sagellm venv: scripts/patches.sh COMMAND [ARGS...]; --help lists them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m sagellm.patchkit "$@"
