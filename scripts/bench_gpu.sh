#!/usr/bin/env bash
# The one script a session runs on a lent GPU (issue 17, kernels.md 9): a fixed plan of at most 6 minutes.
#   0. jax version and device, first;
#   1. the kernel tests with Pallas interpret mode off (they pick it from the backend), at most 90 s;
#   2. scripts/bench_gpu.py: attention (D=128 first) with correctness per shape, lookup, decode, a ~1B train step,
#      then a block sweep; JSON lines appended to $OUT/bench_gpu.jsonl as rows finish; tables at the end.
# `--cpu-smoke` runs the same steps on CPU at tiny shapes (interpret mode), in under 5 minutes: the CI check.
# Imports only what the device image has (jax, flax, optax, numpy; pytest if present): tessera is not installed, so a
# throw-away shim exposes models/ as tessera.models without its __init__ (which imports every method, some of them
# needing ml_collections); bench_gpu.py --device-image makes ml_collections, grain and tensorboardX unimportable
# here too. Only tests/kernels/conftest.py is loaded (--confcutdir). Results go to $OUT (the device tool's return
# folder) when set, else /tmp/bench_gpu.
set -uo pipefail
smoke=0
case "${1:-}" in
  --cpu-smoke) smoke=1 ;;
  "") ;;
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: scripts/bench_gpu.sh [--cpu-smoke]"; exit 0 ;;
  *) echo "error: unknown argument '$1' (usage: scripts/bench_gpu.sh [--cpu-smoke])" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python3}
results=${OUT:-/tmp/bench_gpu}
mkdir -p "$results"
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
mkdir -p "$shim/tessera/models"
: > "$shim/tessera/models/__init__.py"
for f in "$repo"/models/*.py; do
  [ "$(basename "$f")" = __init__.py ] || ln -s "$f" "$shim/tessera/models/"
done
ln -s "$repo/models/kernels" "$shim/tessera/models/kernels"
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.85
start=$SECONDS

"$python" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader 2>/dev/null || true

echo "== kernel tests (interpret off on a GPU) =="
# Most telling first; the CUDA lowering check (CPU-only machines, jaxlib <= 0.10.2) and the trainer config test
# (needs ml_collections) stay in CI.
tests=(tests/kernels/test_masked_rows.py tests/kernels/test_decode_kernel.py tests/kernels/test_full_blocks.py
       tests/kernels/test_attention_kernel.py tests/kernels/test_attention_reference.py
       tests/kernels/test_stem_lookup.py)
selection=(-m "not slow")
[ $smoke = 1 ] && { tests=(tests/kernels/test_masked_rows.py); selection=(-k "float32"); }
if "$python" -c "import pytest" 2>/dev/null; then
  timeout 90 "$python" -m pytest "${tests[@]}" -q "${selection[@]}" --confcutdir=tests/kernels -p no:cacheprovider \
    --durations=5 2>&1 | tee "$results/kernel_tests.log" | tail -15
  tests_rc=${PIPESTATUS[0]}
else  # the bench's per-shape correctness columns still run
  echo "pytest is not installed on this host: kernel tests not run" | tee "$results/kernel_tests.log"
  tests_rc=3
fi

echo "== bench_gpu.py (tests took $((SECONDS - start)) s) =="
rm -f "$results/bench_gpu.jsonl"
flags=(--device-image --jsonl "$results/bench_gpu.jsonl")
[ $smoke = 1 ] && flags+=(--cpu-smoke)
left=$((355 - (SECONDS - start)))  # the whole script stays under 6 minutes
[ $smoke = 1 ] && left=$((290 - (SECONDS - start)))
timeout "$left" "$python" scripts/bench_gpu.py "${flags[@]}" --budget-s $((left - 10)) > "$results/bench_gpu.log" 2>&1
bench_rc=$?
grep -v '^{' "$results/bench_gpu.log" | tail -80
if [ $bench_rc = 124 ]; then  # cut short: the rows written so far still make tables
  echo "bench_gpu.py stopped at the time limit; tables of the rows so far:"
  "$python" scripts/bench_gpu.py --render "$results/bench_gpu.jsonl"
fi

echo "kernel tests rc=$tests_rc, bench rc=$bench_rc, total $((SECONDS - start)) s"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
