#!/usr/bin/env bash
# The operator UI in a real headless Chromium (Debian's `chromium`, driven by playwright-core
# from npm; never a downloaded browser) against the real sluice-api on free ports and a
# database of its own: sign in read-only and as admin, pause the backed-up kind, retry a
# cancelled job, bulk-retry failed ones, read the audit log; no request may leave the
# API's origin. Screenshots land in .tmp/ui-artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium fonts-dejavu-core >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }
fi
command -v node >/dev/null || { apt-get update -qq >/dev/null && apt-get install -y -qq nodejs npm >/dev/null; }
command -v npm >/dev/null || apt-get install -y -qq npm >/dev/null
(cd tests/ui && npm ci --no-audit --no-fund --silent >/dev/null)

cargo build -q -p sluice-api -p sluice-cli
bin="${CARGO_TARGET_DIR:-target}/debug/sluice-api"
ctl="${CARGO_TARGET_DIR:-target}/debug/sluicectl"

db="sluice_ui_browser"
admin_url="${DATABASE_URL%/*}/postgres"
db_url="${DATABASE_URL%/*}/$db"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
# Migrated as operators do, so the API's readiness (which checks the schema version
# recorded by `sluicectl migrate`) turns ready.
DATABASE_URL="$db_url" "$ctl" migrate >/dev/null

# A queue in trouble: email.send backed up for twelve minutes, report.build failing,
# a job running, an hour of completions and failures for the charts.
psql -q -v ON_ERROR_STOP=1 "$db_url" >/dev/null <<'SQL'
INSERT INTO jobs (kind, payload, state, run_at, created_at)
SELECT 'email.send', jsonb_build_object('to', 'user' || g || '@example.com', 'template', 'welcome'),
       'queued', now() - interval '12 minutes' + g * interval '1 second', now() - interval '12 minutes'
  FROM generate_series(1, 240) g;
INSERT INTO jobs (kind, payload, state, attempts, max_attempts, last_error, finished_at, created_at)
SELECT 'report.build', jsonb_build_object('report', 'monthly', 'account', g),
       'failed', 5, 5, 'HTTP 503 from http://reports:8080/build: upstream unavailable',
       now() - g * interval '3 minutes', now() - interval '50 minutes'
  FROM generate_series(1, 3) g;
INSERT INTO jobs (kind, payload, state, attempts, leased_by, leased_at, lease_expires_at, lease_token, traceparent)
VALUES ('image.resize', '{"src": "s3://bucket/cat.png", "width": 640}', 'processing', 1, 'worker-7f9c:41',
        now() - interval '20 seconds', now() + interval '280 seconds', 1,
        '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01');
-- email.send stopped completing twelve minutes ago (that is why it backs up).
INSERT INTO jobs (kind, payload, state, attempts, finished_at, created_at, leased_by)
SELECT k, '{}', CASE WHEN g % 17 = 0 THEN 'failed' ELSE 'completed' END, 1,
       now() - CASE WHEN k = 'email.send' THEN interval '12 minutes' + (g % 47) * interval '1 minute'
                    ELSE (g % 59) * interval '1 minute' END - (g % 7) * interval '5 seconds',
       now() - interval '1 hour', 'worker-7f9c:41'
  FROM unnest(ARRAY['email.send', 'image.resize', 'report.build']) k, generate_series(1, 400) g;
INSERT INTO jobs (kind, payload, state, attempts, last_error, finished_at, idempotency_key, traceparent)
VALUES ('report.build', '{"report": "quarterly", "note": "<script>alert(1)</script>"}', 'cancelled', 2,
        'timeout after 30s', now() - interval '5 minutes', 'quarterly-2026-q4',
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
SQL
cancelled=$(psql -tAq "$db_url" -c "SELECT id FROM jobs WHERE state = 'cancelled' ORDER BY id LIMIT 1")

read_token="read-$(openssl rand -hex 12)"
admin_token="admin-$(openssl rand -hex 12)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
log=$(mktemp)
DATABASE_URL="$db_url" SLUICE_API_ADDR="127.0.0.1:$port" SLUICE_METRICS_ADDR="127.0.0.1:$mport" \
  SLUICE_API_TOKENS="read:viewer:$read_token,admin:alice:$admin_token" SLUICE_LOG_FORMAT=json RUST_LOG=warn \
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
for _ in $(seq 1 600); do
  curl -fs "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs "$base/health/ready" >/dev/null || { echo "60-ui: sluice-api never became ready:"; curl -s "$base/health/ready" || true; echo; cat "$log"; exit 1; }

artifacts="$PWD/.tmp/ui-artifacts"
rm -rf "$artifacts"
status=0
SLUICE_UI_BASE="$base" SLUICE_UI_READ="$read_token" SLUICE_UI_ADMIN="$admin_token" \
  SLUICE_UI_CANCELLED="$cancelled" SLUICE_UI_ARTIFACTS="$artifacts" \
  timeout 180 node tests/ui/ui.test.mjs || status=$?
if [ "$status" -ne 0 ]; then
  echo "browser test failed (exit $status); API log:" >&2
  tail -30 "$log" >&2
fi
exit "$status"
