#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a GPU machine that has no network.
#
#   benchmarks/gpu_check.sh prepare   # here, with network: faiss-cpu's wheel into .whl/
#   benchmarks/gpu_check.sh           # there: installs .whl/ into /tmp/site, runs the check
#
# The machine must have python3 with torch (CUDA), timm, numpy and pillow; faiss (for the CPU
# reference) travels as a wheel. No weights are downloaded: the ViT-B/16 is randomly
# initialised. The check is sized to finish in about 3 minutes on one H200 and is stopped
# after 7 minutes (GPU_CHECK_TIMEOUT). Figures go to $OUT/gpu_check.json where OUT is set,
# else to benchmarks/results/gpu_check.json; copy them into docs/gpu.md with the date and GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
FAISS_VERSION=1.15.1

if [[ "${1:-}" == prepare ]]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "faiss-cpu==$FAISS_VERSION"
    ls -l .whl
    exit 0
fi

if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
out="${OUT:-benchmarks/results}/gpu_check.json"
mkdir -p "$(dirname "$out")"
timeout "${GPU_CHECK_TIMEOUT:-420}" python3 benchmarks/gpu_check.py --device "${GPU_CHECK_DEVICE:-cuda}" --out "$out" "$@"
