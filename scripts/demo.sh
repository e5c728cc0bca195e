#!/usr/bin/env bash
# Sets up (if needed) and runs the demo on the embedded default. Extra arguments go to `ravis demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/ravis demo --out demo-out "$@"
