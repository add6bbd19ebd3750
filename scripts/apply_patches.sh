#!/usr/bin/env bash
# Build third_party/lmdeploy/lmdeploy = pinned LMDeploy (patches/lmdeploy/UPSTREAM) + patches/lmdeploy/series.
# A thin wrapper over `python3 -m sagellm.patchkit` (stdlib only, works before any venv exists).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'USAGE'
Usage: scripts/apply_patches.sh [--check|--reverse|--clean|--help] [patchkit options]

  (no flag)   apply: fetch + verify (sha256) + extract the pinned LMDeploy release if needed,
              apply patches/lmdeploy/series in a fresh directory and swap it into
              third_party/lmdeploy/lmdeploy atomically; prints "up to date" when nothing changed.
              Also writes third_party/lmdeploy/pyproject.toml (pip install --no-deps -e third_party/lmdeploy).
  --check     rebuild pristine + series in a temporary directory and compare file by file
              (drifted files are listed); lint patch headers; check that export reproduces every patch.
  --reverse   put the pristine (unpatched) tree in place.
  --clean     remove the generated tree, pyproject.toml and stamp (--clean --pristine: also the pristine copy).
  --help      this text.

Maintenance (workspace, export, lint, rebase, compat): python3 -m sagellm.patchkit --help,
or `sage patches --help`; the workflow is in patches/README.md.

Environment:
  SAGELLM_CACHE_DIR        download cache root (default ~/.cache/sagellm; wheels in upstream/lmdeploy-VERSION/)
  SAGELLM_KEEP_TURBOMIND=1 keep lmdeploy/lib/*.so (prebuilt TurboMind) in the extracted tree

Exit codes:
  0  success (or already up to date)
  1  check failed: drifted files, header lint errors or round-trip differences
  2  usage or configuration error (bad arguments, malformed UPSTREAM or series)
  3  upstream artifact checksum mismatch (nothing was extracted)
  4  a patch failed to apply (the message names the patch and hunk; the previous tree is untouched)
  5  the upstream artifact could not be fetched
  6  a required tool (git, GNU patch, pip) is missing
USAGE
}

command="apply"
case "${1:-}" in
    --check) command="check"; shift ;;
    --reverse) command="reverse"; shift ;;
    --clean) command="clean"; shift ;;
    -h|--help) usage; exit 0 ;;
    --*|"") ;;
    *) echo "apply_patches.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

if [[ -x "$ROOT/.venv/bin/python" ]]; then
    PYTHON="$ROOT/.venv/bin/python"
else
    PYTHON="$(command -v python3 || true)"
    if [[ -z "$PYTHON" ]]; then
        echo "apply_patches.sh: python3 not found on PATH; install Python 3.10+" >&2
        exit 6
    fi
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m sagellm.patchkit "$command" "$@"
