#!/usr/bin/env bash
# Runs the API and a worker against $DATABASE_URL in the foreground; Ctrl-C drains both
# (SIGINT is forwarded, each process runs its graceful shutdown).
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set}"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$here/target/release
export SLUICE_LOG_FORMAT=${SLUICE_LOG_FORMAT:-pretty}
pids=()
if [ -z "${SLUICE_API_TOKENS:-}" ]; then
  api_args=(--insecure-no-auth)
  echo "run-local: SLUICE_API_TOKENS unset; the API runs with --insecure-no-auth (local only)" >&2
else
  api_args=()
fi
SLUICE_API_ADDR=${SLUICE_API_ADDR:-127.0.0.1:8080} SLUICE_METRICS_ADDR=${SLUICE_API_METRICS_ADDR:-127.0.0.1:9090} \
  "$bin/sluice-api" "${api_args[@]}" & pids+=($!)
SLUICE_METRICS_ADDR=${SLUICE_WORKER_METRICS_ADDR:-127.0.0.1:9091} "$bin/sluice-worker" & pids+=($!)
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' INT TERM
echo "run-local: API on http://${SLUICE_API_ADDR:-127.0.0.1:8080}, worker metrics on http://127.0.0.1:9091/metrics" >&2
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
