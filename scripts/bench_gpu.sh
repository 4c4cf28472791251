#!/usr/bin/env bash
# The one script a session runs on a lent GPU (kernels.md 9): a fixed ~6-minute plan.
#   1. the kernel tests with Pallas interpret mode off (tests pick it from the backend), at most ~3 minutes;
#   2. scripts/bench_kernels (attention vs cuDNN/XLA, lookup vs copy), at most ~3 minutes, printing a table.
# Imports only what the device image has (jax 0.11.x, numpy, pytest): tessera is not installed there, so a
# throw-away shim exposes models/kernels alone as tessera.models.kernels (it depends on nothing else of ours), and
# only tests/kernels/conftest.py is loaded (--confcutdir), never the trainer's. Writes logs and the table's JSON
# under $OUT when set (the device tool's return folder), else under /tmp.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
results=${OUT:-/tmp}
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/tessera/models"
: > "$shim/tessera/models/__init__.py"
ln -s "$repo/models/kernels" "$shim/tessera/models/kernels"
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.85

nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader || true
"$python" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1

echo "== kernel tests (interpret off) =="
timeout 200 "$python" -m pytest tests/kernels -q -m "not slow" --confcutdir=tests/kernels -p no:cacheprovider \
  --durations=5 2>&1 | tee "$results/kernel_tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

echo "== bench_kernels =="
timeout 240 "$python" scripts/bench_kernels --budget-s 170 --json "$results/bench_kernels.json" 2>&1 \
  | tee "$results/bench_kernels.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}

echo "kernel tests rc=$tests_rc, bench rc=$bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
