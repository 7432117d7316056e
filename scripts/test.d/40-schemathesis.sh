#!/usr/bin/env bash
# schemathesis against a running sluice-api, driven by its own /openapi.json: no 5xx, and
# every response matches the documented schema. Fresh database, bounded run time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"

python3 -m pip install -q --disable-pip-version-check 'schemathesis==3.39.16' 'hypothesis<6.125' >/dev/null

cargo build -q -p sluice-api
bin="${CARGO_TARGET_DIR:-target}/debug/sluice-api"

db="sluice_schemathesis"
admin_url="${DATABASE_URL%/*}/postgres"
db_url="${DATABASE_URL%/*}/$db"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
# sluicectl is the usual way; plain psql keeps this check independent of the CLI crate.
if cargo build -q -p sluice-cli 2>/dev/null && [ -x "${CARGO_TARGET_DIR:-target}/debug/sluicectl" ]; then
  "${CARGO_TARGET_DIR:-target}/debug/sluicectl" --database-url "$db_url" migrate >/dev/null
else
  for f in migrations/*.sql; do psql -q -v ON_ERROR_STOP=1 "$db_url" -f "$f" >/dev/null; done
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
DATABASE_URL="$db_url" SLUICE_API_ADDR="127.0.0.1:$port" SLUICE_METRICS_ADDR="127.0.0.1:$mport" \
  SLUICE_API_TOKENS="admin:schemathesis:st-token-0123456789" SLUICE_API_MAX_WAIT=1s SLUICE_LOG_FORMAT=json RUST_LOG=warn \
  "$bin" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -f "$log"
}
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -fs "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs "$base/health/ready" >/dev/null || { cat "$log"; exit 1; }

status=0
timeout 180 python3 -m schemathesis.cli run "$base/openapi.json" \
  --header "Authorization: Bearer st-token-0123456789" \
  --checks not_a_server_error,response_schema_conformance \
  --hypothesis-max-examples 25 \
  --hypothesis-deadline 5000 \
  --request-timeout 10000 \
  ${SCHEMATHESIS_SEED:+--hypothesis-seed "$SCHEMATHESIS_SEED"} \
  --no-color || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found problems (exit $status); API log:" >&2
  tail -50 "$log" >&2
fi
exit "$status"
