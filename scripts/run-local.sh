#!/usr/bin/env bash
# Runs the API and a worker against $DATABASE_URL in the foreground. Ctrl-C (or SIGTERM)
# drains both: each gets exactly one SIGTERM and runs its graceful shutdown; the script
# exits 0 when both drained cleanly. A second Ctrl-C is passed on, which stops them at once.
#
# Signals, and why this is more than `cmd & cmd & wait`:
# - On a terminal, Ctrl-C goes to the whole foreground process group. If `make` is in it,
#   make dies of SIGINT after its recipe ends (exit 130, "Interrupt") however cleanly the
#   drain went; if the services are in it, they see the terminal's SIGINT *and* the one
#   forwarded here, and a second signal means "stop now" to them. So on a terminal the
#   script re-runs itself as a job-controlled foreground job that owns the terminal (make
#   no longer hears Ctrl-C), and with `set -m` each service gets its own process group
#   (they no longer hear the terminal either): the only signals they get are the ones
#   forwarded below, once each.
# - `wait` returns early (128+signal) when a trap runs; the loop waits again until each
#   service has really exited, and reports the services' own exit codes, not the signal's.
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set}"
if [ -t 0 ] && [ -z "${SLUICE_RUN_LOCAL_INNER:-}" ]; then
  set -m
  status=0
  SLUICE_RUN_LOCAL_INNER=1 "$0" "$@" || status=$?
  exit "$status"
fi
set -m
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SLUICE_BIN_DIR:-$here/target/release}
export SLUICE_LOG_FORMAT=${SLUICE_LOG_FORMAT:-pretty}
# The token `make run` uses unless SLUICE_API_TOKENS is set. The API listens on loopback
# only, so a well-known local token is safe; it exercises auth the way production does.
# SLUICE_INSECURE_NO_AUTH=true runs without tokens instead.
LOCAL_TOKEN=local-dev-admin-token
if [ -z "${SLUICE_API_TOKENS:-}" ] && [ -z "${SLUICE_INSECURE_NO_AUTH:-}" ]; then
  export SLUICE_API_TOKENS="admin:local:$LOCAL_TOKEN"
  echo "run-local: SLUICE_API_TOKENS unset; using the local admin token $LOCAL_TOKEN" >&2
fi
api_addr=${SLUICE_API_ADDR:-127.0.0.1:8080}
api_metrics=${SLUICE_API_METRICS_ADDR:-127.0.0.1:9090}
worker_metrics=${SLUICE_WORKER_METRICS_ADDR:-127.0.0.1:9091}
pids=()
SLUICE_API_ADDR=$api_addr SLUICE_METRICS_ADDR=$api_metrics "$bin/sluice-api" & pids+=($!)
SLUICE_METRICS_ADDR=$worker_metrics "$bin/sluice-worker" & pids+=($!)

signals=0
forward() {
  signals=$((signals + 1))
  if [ "$signals" = 1 ]; then
    echo "run-local: draining the API and the worker (Ctrl-C again to stop at once)" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
  else
    kill -INT "${pids[@]}" 2>/dev/null || true
  fi
}
trap forward INT TERM
echo "run-local: API on http://$api_addr (metrics http://$api_metrics/metrics), worker metrics on http://$worker_metrics/metrics; Ctrl-C drains and stops" >&2

status=0
for p in "${pids[@]}"; do
  # Interrupted waits (a trap ran) return early; wait until the process is gone, then
  # once more for its real exit code, which bash keeps for reaped background jobs.
  while kill -0 "$p" 2>/dev/null; do wait "$p" 2>/dev/null || true; done
  rc=0
  wait "$p" 2>/dev/null || rc=$?
  [ "$rc" = 0 ] || status=$rc
done
[ "$status" = 0 ] && echo "run-local: stopped cleanly" >&2
exit "$status"
