#!/usr/bin/env bash
# Run the trainer on every worker of a Cloud TPU VM pod slice (one JAX process per worker host).
#
#   launch/tpu_pod.sh --tpu NAME --zone Z [--project P] [--sweep] [--dry-run] -- --config configs/lm.py:small \
#       --workdir gs://bucket/run [--config.a.b=V ...]
#
# 1. copies this checkout (without .venv/runs/caches) to ~/tessera on every worker and installs it there with
#    jax[tpu] into ~/tessera/.venv (idempotent: pip skips what is installed);
# 2. starts `python -m tessera.trainer ARGS` on all workers at once (gcloud ... ssh --worker=all); the processes
#    find each other through the TPU metadata (TESSERA_DISTRIBUTED=auto -> jax.distributed auto-detection).
# --sweep: one job per point of the config's sweep(), one after another, each in <workdir>/<point>.
# --dry-run: print the gcloud commands instead of running them. Queued resources / GKE: see docs/scale.md.
# The workdir must be visible to every worker (gs://... or a shared mount): checkpoints are written by all of them.
set -euo pipefail
tpu="" zone="" project="" sweep=0 dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --sweep) sweep=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (usage: launch/tpu_pod.sh --tpu NAME --zone Z [--project P] [--sweep] -- ARGS)" >&2; exit 2 ;;
  esac
done
[ -n "$tpu" ] && [ -n "$zone" ] || { echo "error: --tpu and --zone are required" >&2; exit 2; }
source "$(dirname "$0")/../scripts/_bootstrap.sh"   # local venv: validates the config and expands the sweep

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone"); [ -n "$project" ] && where+=(--project "$project")
run() { if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

# Validate (and with --sweep expand) locally first: a bad flag fails here, not on 64 hosts.
if [ "$sweep" = 1 ]; then jobs="$("$PY" launch/sweep_args.py "$@" --sweep)"; else jobs="$("$PY" launch/sweep_args.py "$@")"; fi

tarball="$(mktemp -d)/tessera.tgz"
tar -czf "$tarball" --exclude=.venv --exclude=runs --exclude=.jax_cache --exclude=.git -C "$ROOT" .
run "${gcloud_tpu[@]}" scp "$tarball" "$tpu:/tmp/tessera.tgz" --worker=all "${where[@]}"
run "${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" --command \
  'mkdir -p ~/tessera && tar -xzf /tmp/tessera.tgz -C ~/tessera && cd ~/tessera && { [ -x .venv/bin/python ] || python3 -m venv .venv; } && .venv/bin/pip install -q -e . "jax[tpu]"'
while IFS= read -r args; do
  echo "tpu_pod.sh: running on all workers of $tpu: $args" >&2
  run "${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" --command \
    "cd ~/tessera && TESSERA_DISTRIBUTED=auto .venv/bin/python -m tessera.trainer $args"
done <<< "$jobs"
