#!/usr/bin/env bash
# Operator UI render time with a big jobs table, in a database of its own: the overview and
# jobs pages, signed in, one request at a time (p50 and p99 beside the target). Sizes come
# from the environment:
#   SLUICE_BENCH_UI_JOBS     jobs in the table (default 1000000)
#   SLUICE_BENCH_UI_KINDS    kinds they are spread over (default 20)
#   SLUICE_BENCH_UI_SECONDS  seconds per page (default 10)
# The mix is what a retention window holds: 90% completed (1/24 of them in the last hour),
# 5% failed, 4% queued, 0.5% processing, 0.5% cancelled.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"
jobs="${SLUICE_BENCH_UI_JOBS:-1000000}"
kinds="${SLUICE_BENCH_UI_KINDS:-20}"
secs="${SLUICE_BENCH_UI_SECONDS:-10}"

if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null; }
fi

db="sluice_bench_ui"
admin_url="${DATABASE_URL%/*}/postgres"
db_url="${DATABASE_URL%/*}/$db"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null 2>&1
# Migrated with sluicectl, as operators do: readiness checks the schema version it records.
cargo build -q --release -p sluice-cli
DATABASE_URL="$db_url" "${CARGO_TARGET_DIR:-target}/release/sluicectl" migrate >/dev/null

seed_start=$(date +%s)
psql -q -v ON_ERROR_STOP=1 -v jobs="$jobs" -v kinds="$kinds" "$db_url" >/dev/null <<'SQL'
ALTER TABLE jobs DISABLE TRIGGER USER;
INSERT INTO jobs (kind, payload, state, attempts, run_at, created_at, finished_at, last_error, leased_by, leased_at, lease_expires_at, lease_token)
SELECT 'kind.' || (g % :kinds),
       jsonb_build_object('n', g, 'to', 'user' || g || '@example.com'),
       s.state,
       CASE WHEN s.state = 'queued' THEN 0 ELSE 1 END,
       now() - (g % 3600) * interval '1 second',
       now() - interval '1 day' + (g::float8 / :jobs) * interval '1 day',
       CASE WHEN s.state IN ('completed', 'failed', 'cancelled')
            THEN now() - interval '1 day' + (g::float8 / :jobs) * interval '1 day' END,
       CASE WHEN s.state = 'failed' THEN 'HTTP 503 from upstream' END,
       CASE WHEN s.state = 'processing' THEN 'bench-worker:1' END,
       CASE WHEN s.state = 'processing' THEN now() END,
       CASE WHEN s.state = 'processing' THEN now() + interval '5 minutes' END,
       CASE WHEN s.state = 'processing' THEN g END
  FROM generate_series(1, :jobs) g,
       LATERAL (SELECT CASE WHEN g % 200 < 180 THEN 'completed'
                            WHEN g % 200 < 190 THEN 'failed'
                            WHEN g % 200 < 198 THEN 'queued'
                            WHEN g % 200 < 199 THEN 'processing'
                            ELSE 'cancelled' END AS state) s;
ALTER TABLE jobs ENABLE TRIGGER USER;
SQL
psql -q "$db_url" -c "VACUUM ANALYZE jobs" >/dev/null
seed_secs=$(( $(date +%s) - seed_start ))
rows=$(psql -tAq "$db_url" -c "SELECT count(*) FROM jobs")
last_hour=$(psql -tAq "$db_url" -c "SELECT count(*) FROM jobs WHERE state IN ('completed','failed') AND finished_at > now() - interval '1 hour'")
some_id=$(psql -tAq "$db_url" -c "SELECT max(id) / 2 FROM jobs")
# The chart's query without the UI's cache, as the database runs it.
chart_ms=$(psql -tAq "$db_url" -c "EXPLAIN (ANALYZE, FORMAT JSON)
  SELECT kind, least(floor(extract(epoch FROM now() - finished_at) / 60), 59)::int4, count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state = 'failed')
    FROM jobs WHERE state IN ('completed', 'failed') AND finished_at > now() - interval '60 minutes' GROUP BY 1, 2" \
  | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["Execution Time"], 1))')

cargo build -q --release -p sluice-api
bin="${CARGO_TARGET_DIR:-target}/release/sluice-api"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
mport=$(free_port)
tmp=$(mktemp -d)
DATABASE_URL="$db_url" SLUICE_API_ADDR="127.0.0.1:$port" SLUICE_METRICS_ADDR="127.0.0.1:$mport" \
  SLUICE_API_TOKENS="read:bench:bench-token" SLUICE_LOG_FORMAT=json RUST_LOG=warn \
  "$bin" >"$tmp/api.log" 2>&1 &
pid=$!
cleanup() { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$tmp"; psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -fs "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs "$base/health/ready" >/dev/null

# Sign in as a browser would: the form's double-submit token, then the session cookie.
curl -fs -c "$tmp/jar" "$base/ui/sign-in" -o "$tmp/form.html"
csrf=$(grep -o 'name="csrf" value="[0-9a-f]*"' "$tmp/form.html" | head -1 | sed 's/.*value="//; s/"$//')
curl -fs -b "$tmp/jar" -c "$tmp/jar" -o /dev/null --data-urlencode "token=bench-token" --data-urlencode "csrf=$csrf" "$base/ui/sign-in"
session=$(awk '$6 == "sluice_ui_session" {print $7}' "$tmp/jar")
[ -n "$session" ] || { echo "could not sign in" >&2; cat "$tmp/api.log" >&2; exit 1; }

cat >"$tmp/page.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.2f %.2f %d %d\n", latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
measure() {
  local path="$1" label="$2" target="$3"
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: sluice_ui_session=$session" "$base$path")
  [ "$status" = 200 ] || { echo "$path answered $status" >&2; exit 1; }
  read -r _ p50 p99 n bad < <(wrk -t1 -c1 -d"${secs}s" -H "Cookie: sluice_ui_session=$session" -s "$tmp/page.lua" "$base$path" | grep '^RESULT')
  printf '%-40s %9s ms p50 %9s ms p99   target %s   (%s requests, %s errors)\n' "$label" "$p50" "$p99" "$target" "$n" "$bad"
}
echo "jobs table: $rows rows over $kinds kinds ($last_hour finished in the last hour), seeded in ${seed_secs}s"
measure "/ui" "GET /ui (overview)" "p50 <= 50 ms"
measure "/ui/jobs" "GET /ui/jobs (first page)" "p50 <= 50 ms"
measure "/ui/jobs?state=failed&kind=kind.3" "GET /ui/jobs?state=failed&kind=kind.3" "p50 <= 50 ms"
measure "/ui/jobs?state=completed&before=$some_id" "GET /ui/jobs?state=completed&before=N" "p50 <= 50 ms"
measure "/ui/jobs/$some_id" "GET /ui/jobs/{id}" "p50 <= 50 ms"
printf '%-40s %9s ms   (run by itself; the UI runs it in the background, at most every 10 s while someone looks, never inside a page request)\n' "chart query (last hour, all kinds)" "$chart_ms"
