#!/usr/bin/env bash
# Set up sagellm on this machine (idempotent; re-run after pulling).
#
#   1. .venv/ at the repo root (python3 -m venv)
#   2. torch (CPU build here; see requirements/torch.txt for accelerator hosts)
#   3. pinned runtime dependencies (requirements/*.txt)
#   4. LMDeploy v0.11.0 fetched from PyPI, checksum-verified, patched into third_party/lmdeploy
#   5. patched LMDeploy and sagellm installed editable into .venv
#   6. a check that `import lmdeploy` resolves to third_party/lmdeploy
#   7. sagellm's native cpu kernels compiled for this machine (optional: without a C++ compiler the
#      torch kernels serve; the engine builds them on first use otherwise)
#
# Environment: PYTHON (interpreter for the venv, default python3), SAGELLM_TORCH_SPEC (pip spec for torch),
# SAGELLM_CACHE_DIR (downloads and models, default ~/.cache/sagellm).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STEPS=7
step() { printf '\n[setup %s/%s] %s\n' "$1" "$STEPS" "$2"; }
# Each pip stage runs only when its inputs changed since the last successful run.
stamp_ok() { [ -f "$VENV/.sagellm-$1" ] && [ "$(cat "$VENV/.sagellm-$1")" = "$2" ]; }
stamp_set() { echo "$2" > "$VENV/.sagellm-$1"; }
pip_quiet() { "$VPY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

step 1 "virtual environment at .venv"
if [ ! -x "$VPY" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Editable installs below build without isolation: they need a setuptools that reads PEP 639 metadata.
if ! stamp_ok tools "setuptools>=77"; then
    pip_quiet -q --upgrade pip "setuptools>=77" wheel
    stamp_set tools "setuptools>=77"
fi
"$VPY" --version

step 2 "torch"
TORCH_SPEC="${SAGELLM_TORCH_SPEC:-$(grep -v '^#' requirements/torch.txt | xargs)}"
if stamp_ok torch "$TORCH_SPEC"; then
    echo "up to date ($TORCH_SPEC)"
else
    # shellcheck disable=SC2086
    pip_quiet $TORCH_SPEC
    stamp_set torch "$TORCH_SPEC"
fi

step 3 "runtime dependencies"
DEPS_HASH="$(cat requirements/runtime.txt requirements/no-deps.txt | sha256sum | cut -d' ' -f1)"
if stamp_ok deps "$DEPS_HASH"; then
    echo "up to date"
else
    pip_quiet -r requirements/runtime.txt
    pip_quiet --no-deps -r requirements/no-deps.txt
    # Packages that drag in CUDA builds of torchvision/torchaudio break `import transformers` on CPU torch.
    "$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    stamp_set deps "$DEPS_HASH"
fi

step 4 "LMDeploy v0.11.0 into third_party/lmdeploy (fetch, verify, patch)"
PYTHON_FOR_PATCHES="$VPY" bash scripts/apply_patches.sh

step 5 "editable installs (patched LMDeploy, sagellm)"
if ! "$VPY" -m pip show -q lmdeploy >/dev/null 2>&1 || ! "$VPY" -m pip show -q sagellm >/dev/null 2>&1 \
        || ! stamp_ok pyproject "$(sha256sum pyproject.toml | cut -d' ' -f1)"; then
    log="$VENV/.sagellm-editable.log"
    { pip_quiet -q --no-deps --no-build-isolation -e third_party/lmdeploy \
        && pip_quiet -q --no-deps --no-build-isolation -e .; } >"$log" 2>&1 \
        || { cat "$log"; echo "editable install failed (log above, also in $log)" >&2; exit 1; }
    echo "installed lmdeploy (third_party/lmdeploy) and sagellm in editable mode"
    stamp_set pyproject "$(sha256sum pyproject.toml | cut -d' ' -f1)"
else
    echo "up to date"
fi

step 6 "check"
"$VPY" - <<'EOF'
import pathlib
import lmdeploy
import sagellm
tree = pathlib.Path(lmdeploy.__file__).resolve().parent.parent
expected = pathlib.Path("third_party/lmdeploy").resolve()
if tree != expected:
    raise SystemExit(f"import lmdeploy resolves to {tree}, expected the patched tree {expected}")
print(f"lmdeploy {lmdeploy.__version__} from {tree}; sagellm {sagellm.__version__}")
EOF
step 7 "native cpu kernels (C++, cached per machine under \${SAGELLM_CACHE_DIR:-~/.cache/sagellm}/kernels)"
"$VPY" -m sagellm.accel.kernels.cpu.native || echo "continuing without them: the cpu device uses its torch kernels"

echo
echo "sagellm is set up. Activate with: source .venv/bin/activate"
