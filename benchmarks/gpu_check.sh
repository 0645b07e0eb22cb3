#!/usr/bin/env bash
# The GPU check of issue 16: encode / index / train / search figures on one CUDA GPU, < 8 min.
#   bash benchmarks/gpu_check.sh [--skip train ...]    -> prints a table, writes gpu_check.json
# Sets up .venv first when needed (make setup); nothing needs a network at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 .venv/bin/python benchmarks/gpu_check.py "$@"
