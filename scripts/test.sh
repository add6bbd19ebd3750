#!/usr/bin/env bash
# Set up (idempotent), verify the patched LMDeploy tree and the patch headers, then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k oracle -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/setup.sh
echo
echo "[test] patched tree equals pristine LMDeploy 0.11.0 + patches/lmdeploy/series"
bash scripts/apply_patches.sh --check
echo "[test] patch headers"
.venv/bin/python -m sagellm.patchkit lint
echo "[test] pytest"
exec .venv/bin/python -m pytest -q "$@"
