#!/usr/bin/env bash
# sluice-api under load, in a database of its own: POST /v1/jobs with 64 keep-alive
# connections (enqueue coalescing), POST /v1/jobs/batch (BENCH_API_BATCH, 1000 jobs a
# request, 16 connections), GET /health/ready, SIGTERM→503 latency, idle RSS. Each figure
# is printed beside its target with ok/MISSED; throughput also as a multiple of the run's
# pgbench tps ($BENCH_STATE/pgbench_tps). BENCH_API_SECS (15) seconds per load.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"

if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null; }
fi

db="sluice_bench_api"
admin_url="${DATABASE_URL%/*}/postgres"
db_url="${DATABASE_URL%/*}/$db"
PGOPTIONS="-c client_min_messages=warning" psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
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

secs="${BENCH_API_SECS:-15}"
batch="${BENCH_API_BATCH:-1000}"
pgbench_tps=$(cat "${BENCH_STATE:-/nonexistent}/pgbench_tps" 2>/dev/null || true)
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
python3 - "$batch" >"$tmp/batch.json" <<'PY'
import json, sys
print(json.dumps({"jobs": [{"kind": "bench.noop", "payload": {"n": i}} for i in range(int(sys.argv[1]))]}))
PY
cat >"$tmp/batch.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token-0123456789"
local f = io.open("$tmp/batch.json"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %d %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(99) / 1000, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
cat >"$tmp/get.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(99) / 1000, summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

read -r _ post_rps post_p99 post_bad post_err < <(wrk -t2 -c64 -d"${secs}s" --latency -s "$tmp/post.lua" "$base/v1/jobs" | grep '^RESULT')
rows=$(psql -tAq "$db_url" -c "SELECT count(*) FROM jobs")
read -r _ batch_rps batch_p99 batch_bad batch_err < <(wrk -t2 -c16 -d"${secs}s" --latency -s "$tmp/batch.lua" "$base/v1/jobs/batch" | grep '^RESULT')
batch_rows=$(( $(psql -tAq "$db_url" -c "SELECT count(*) FROM jobs") - rows ))
read -r _ ready_rps ready_p99 _ _ < <(wrk -t2 -c64 -d5s -s "$tmp/get.lua" "$base/health/ready" | grep '^RESULT')

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

# name, value, target, verdict (ok / MISSED / (report)).
row() { printf '%-46s %16s   target %-14s %s\n' "$1" "$2" "$3" "$4"; }
verdict() { if python3 -c "import sys; sys.exit(0 if ($1) else 1)"; then echo ok; else echo MISSED; fi; }
times_ref() { [ -n "$pgbench_tps" ] && python3 -c "print(f' {$1 / $pgbench_tps:.2f}x')" || true; }
batch_jobs=$(python3 -c "print(round($batch_rps * $batch))")
row "POST /v1/jobs (64 conns, ${secs}s)" "$post_rps/s$(times_ref "$post_rps")" ">= 10000/s" "$(verdict "$post_rps >= 10000")"
row "POST /v1/jobs p99" "$post_p99 ms" "<= 20 ms" "$(verdict "$post_p99 <= 20")"
row "POST /v1/jobs errors (non-2xx, socket)" "$post_bad, $post_err" "0, 0" "$(verdict "$post_bad == 0 and $post_err == 0")"
echo "    rows written: $rows"
row "POST /v1/jobs/batch ($batch a request, 16 conns)" "$batch_jobs jobs/s$(times_ref "$batch_jobs")" ">= 100000/s" "$(verdict "$batch_jobs >= 100000")"
row "POST /v1/jobs/batch p99" "$batch_p99 ms" "" "(report)"
row "POST /v1/jobs/batch errors (non-2xx, socket)" "$batch_bad, $batch_err" "0, 0" "$(verdict "$batch_bad == 0 and $batch_err == 0")"
echo "    rows written: $batch_rows ($(python3 -c "print(round($batch_rows / $secs))") jobs/s by the table)"
row "GET /health/ready" "$ready_rps/s" "" "(report)"
row "SIGTERM -> 503" "$flip_ms ms" "<= 5 ms" "$(verdict "$flip_ms <= 5")"
row "API RSS idle" "$((rss_kib / 1024)) MiB" "<= 20 MiB" "$(verdict "$rss_kib <= 20 * 1024")"
