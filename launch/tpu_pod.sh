#!/usr/bin/env bash
# Run the trainer on every worker of a Cloud TPU VM pod slice (one JAX process per worker host).
#
#   launch/tpu_pod.sh --tpu NAME --zone Z [--project P] [--sweep] [--background] [--dry-run] -- \
#       --config configs/lm.py:small --workdir gs://bucket/run [--config.a.b=V ...]
#   launch/tpu_pod.sh --tpu NAME --zone Z --logs [--lines N] [--follow]     # the workers' logs of --background
#
# 1. copies this checkout (without .venv/runs/caches) to ~/tessera on every worker; installs python3-venv when
#    missing, checks for Python >= 3.11 and installs the checkout with jax[tpu] into ~/tessera/.venv (idempotent);
# 2. runs `.venv/bin/python -m tessera.trainer ARGS` on all workers at once (gcloud ... ssh --worker=all); the
#    processes find each other through the TPU metadata (TESSERA_DISTRIBUTED=auto -> jax.distributed auto-detection).
# --sweep: one job per point of the config's sweep(), one after another, each in <workdir>/<point>.
# --background: the job (all sweep points, in order) runs under nohup on every worker, logging to
#    ~/tessera/logs/tessera-<host>.log there; this script returns at once (losing the ssh does not stop training).
#    --logs prints the last --lines (50) of every worker's log; --follow keeps tailing.
# --dry-run: print the gcloud commands instead of running them. Queued resources / GKE: see docs/scale.md.
# Every remote command gets stdin from /dev/null: an ssh reading stdin would swallow the remaining sweep points.
# The workdir must be visible to every worker (gs://... or a shared mount): checkpoints are written by all of them.
set -euo pipefail
usage="usage: launch/tpu_pod.sh --tpu NAME --zone Z [--project P] [--sweep] [--background] [--dry-run] -- ARGS
       launch/tpu_pod.sh --tpu NAME --zone Z [--project P] --logs [--lines N] [--follow]"
tpu="" zone="" project="" sweep=0 dry=0 background=0 logs=0 lines=50 follow=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --sweep) sweep=1; shift ;;
    --background) background=1; shift ;;
    --logs) logs=1; shift ;;
    --lines) lines="$2"; shift 2 ;;
    --follow) follow=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 ($usage)" >&2; exit 2 ;;
  esac
done
[ -n "$tpu" ] && [ -n "$zone" ] || { echo "error: --tpu and --zone are required ($usage)" >&2; exit 2; }
[[ "$lines" =~ ^[0-9]+$ ]] || { echo "error: --lines must be a number, got $lines" >&2; exit 2; }

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone"); [ -n "$project" ] && where+=(--project "$project")
run() { if [ "$dry" = 1 ]; then printf '%q ' "$@"; echo; else "$@" </dev/null; fi; }
on_workers() { run "${gcloud_tpu[@]}" ssh "$tpu" --worker=all "${where[@]}" --command "$1"; }
LOG='~/tessera/logs/tessera-$(hostname).log'

if [ "$logs" = 1 ]; then
  on_workers "tail -n $lines $([ "$follow" = 1 ] && echo -F) $LOG"
  exit 0
fi

source "$(dirname "$0")/../scripts/_bootstrap.sh"   # local venv: validates the config and expands the sweep
# Validate (and with --sweep expand) locally first: a bad flag fails here, not on 64 hosts.
if [ "$sweep" = 1 ]; then jobs="$("$PY" launch/sweep_args.py "$@" --sweep)"; else jobs="$("$PY" launch/sweep_args.py "$@")"; fi
mapfile -t points <<< "$jobs"

# Worker setup: Python >= 3.11 (python3.12/3.11 when python3 is older), python3-venv when venv/ensurepip is missing.
setup='set -e; mkdir -p ~/tessera/logs && tar -xzf /tmp/tessera.tgz -C ~/tessera && cd ~/tessera
py=""; for p in python3 python3.13 python3.12 python3.11; do
  if command -v $p >/dev/null && $p -c "import sys; sys.exit(sys.version_info < (3, 11))"; then py=$p; break; fi; done
[ -n "$py" ] || { echo "error: $(hostname): tessera needs Python >= 3.11 (found $(python3 --version 2>&1)); use a newer TPU VM image or install python3.11" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
  $py -c "import ensurepip, venv" 2>/dev/null || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$py-venv" || sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
  $py -m venv .venv
fi
.venv/bin/pip install -q -e . "jax[tpu]"'

staging="$(mktemp -d)"; trap 'rm -rf "$staging"' EXIT
tarball="$staging/tessera.tgz"
tar -czf "$tarball" --exclude=.venv --exclude=runs --exclude=.jax_cache --exclude=.git -C "$ROOT" .
run "${gcloud_tpu[@]}" scp "$tarball" "$tpu:/tmp/tessera.tgz" --worker=all "${where[@]}"
on_workers "$setup"

train=()
for args in "${points[@]}"; do
  train+=("TESSERA_DISTRIBUTED=auto .venv/bin/python -m tessera.trainer $args")
done
if [ "$background" = 1 ]; then
  joined="$(printf '%s && ' "${train[@]}")"; joined="${joined% && }"
  script="cd ~/tessera && $joined"
  echo "tpu_pod.sh: starting ${#train[@]} job(s) in the background on all workers of $tpu; logs: launch/tpu_pod.sh --tpu $tpu --zone $zone --logs" >&2
  on_workers "cd ~/tessera && nohup bash -c $(printf '%q' "$script") >> $LOG 2>&1 < /dev/null & echo \"\$(hostname): started, log $LOG\""
  exit 0
fi
for i in "${!train[@]}"; do
  echo "tpu_pod.sh: running on all workers of $tpu: ${points[$i]}" >&2
  on_workers "cd ~/tessera && ${train[$i]}"
done
