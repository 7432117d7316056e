#!/usr/bin/env bash
# sluice-api under load, in a database of its own: POST /v1/jobs with 64 keep-alive
# connections (enqueue coalescing), GET /health/ready, SIGTERM→503 latency, idle RSS.
# Each figure is printed beside its target.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"

if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null; }
fi

db="sluice_bench_api"
admin_url="${DATABASE_URL%/*}/postgres"
db_url="${DATABASE_URL%/*}/$db"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
# Migrated with sluicectl, as operators do: readiness checks the schema version it records.
cargo build -q --release -p sluice-cli
DATABASE_URL="$db_url" "${CARGO_TARGET_DIR:-target}/release/sluicectl" migrate >/dev/null

cargo build -q --release -p sluice-api
bin="${CARGO_TARGET_DIR:-target}/release/sluice-api"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tmp=$(mktemp -d)
DATABASE_URL="$db_url" SLUICE_API_ADDR="127.0.0.1:$port" SLUICE_METRICS_ADDR="127.0.0.1:$mport" \
  SLUICE_API_TOKENS="enqueue:bench-token-0123456789" SLUICE_LOG_FORMAT=json RUST_LOG=warn \
  "$bin" >"$tmp/api.log" 2>&1 &
pid=$!
cleanup() { kill -9 "$pid" 2>/dev/null || true; rm -rf "$tmp"; psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -fs "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs "$base/health/ready" >/dev/null

rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")

cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token-0123456789"
wrk.body = '{"kind":"bench.noop","payload":{"n":1}}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(99) / 1000, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
cat >"$tmp/get.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(99) / 1000, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

read -r _ post_rps post_p99 post_bad post_err < <(wrk -t2 -c64 -d15s --latency -s "$tmp/post.lua" "$base/v1/jobs" | grep '^RESULT')
read -r _ ready_rps ready_p99 _ _ < <(wrk -t2 -c64 -d5s -s "$tmp/get.lua" "$base/health/ready" | grep '^RESULT')
rows=$(psql -tAq "$db_url" -c "SELECT count(*) FROM jobs")

# SIGTERM→503: a tight readiness loop on one keep-alive connection, timed from the kill.
flip_ms=$(python3 - "$port" "$pid" <<'PY'
import http.client, os, signal, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
def ready():
    c.request("GET", "/health/ready"); r = c.getresponse(); r.read(); return r.status
assert ready() == 200
t0 = time.perf_counter()
os.kill(pid, signal.SIGTERM)
while ready() != 503:
    pass
print(f"{(time.perf_counter() - t0) * 1000:.2f}")
PY
)
# The drain delay is 0s: the API exits on its own.
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done

printf '%-34s %12s   target %s\n' "POST /v1/jobs (64 conns, 15s)" "$post_rps req/s" ">= 10000 req/s"
printf '%-34s %12s   target %s\n' "POST /v1/jobs p99" "$post_p99 ms" "<= 20 ms"
printf '%-34s %12s   (non-2xx %s, socket errors %s, rows %s)\n' "POST /v1/jobs errors" "" "$post_bad" "$post_err" "$rows"
printf '%-34s %12s   target %s\n' "GET /health/ready" "$ready_rps req/s" "(report)"
printf '%-34s %12s   target %s\n' "SIGTERM -> 503" "$flip_ms ms" "<= 5 ms"
printf '%-34s %12s   target %s\n' "API RSS idle" "$((rss_kib / 1024)) MiB" "<= 20 MiB"
