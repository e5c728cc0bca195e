#!/usr/bin/env bash
# Sets up (if needed) and runs the default test suite (fast; `-m slow` opts into long runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
