#!/usr/bin/env bash
# Flow control (issue 13), in a database of its own, one release worker at concurrency 16:
#   1. a no-op drain of an unlimited kind (`sluice.noop`) alone;
#   2. the same drain while another kind (`sluice.sleep`, 10 s jobs) has
#      `global_concurrency = 2` and a backlog: within 5% of (1) — limits must not tax
#      kinds without them;
#   3. the drain of a kind with `global_concurrency = 100` (reported).
# Rounds 1 and 2 alternate BENCH_FLOW_ROUNDS times (3) and the medians are compared, so a
# slow moment of the machine does not decide the verdict. Size: BENCH_FLOW_JOBS (20000).
# Throughput = jobs / (last finished_at - first leased_at), database stamps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"
db="sluice_bench_flow"
admin_url="${DATABASE_URL%/*}/postgres"
url="${DATABASE_URL%/*}/$db"
jobs="${BENCH_FLOW_JOBS:-20000}"
rounds="${BENCH_FLOW_ROUNDS:-3}"
work=$(mktemp -d)
worker_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
PGOPTIONS="-c client_min_messages=warning" psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
cargo build -q --release -p sluice-worker --bin sluice-worker -p sluice-cli --bin sluicectl
target_dir="${CARGO_TARGET_DIR:-target}"
DATABASE_URL="$url" "$target_dir/release/sluicectl" migrate >/dev/null

# Starts a worker with handlers file $1 and waits for its readiness.
start_worker() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  DATABASE_URL="$url" SLUICE_HANDLERS_FILE="$1" SLUICE_WORKER_CONCURRENCY=16 \
    SLUICE_METRICS_ADDR="127.0.0.1:$port" RUST_LOG=warn "$target_dir/release/sluice-worker" \
    >"$work/worker.log" 2>&1 &
  worker_pid=$!
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "worker never became ready: $(tail -5 "$work/worker.log")" >&2
  exit 1
}
stop_worker() { kill -TERM "$worker_pid"; wait "$worker_pid" || true; worker_pid=""; }

# Drains $jobs jobs of kind $1 (enqueued while the worker runs, in one statement) and
# prints jobs/s.
drain() {
  local kind=$1
  psql "$url" -qAt -c "DELETE FROM jobs WHERE kind = '$kind'" >/dev/null
  psql "$url" -qAt -c "INSERT INTO jobs (kind, payload) SELECT '$kind', '{}' FROM generate_series(1, $jobs)" >/dev/null
  until [ "$(psql "$url" -qAt -c "SELECT count(*) FROM jobs WHERE kind = '$kind' AND state <> 'completed'")" = 0 ]; do
    sleep 0.2
  done
  psql "$url" -qAt -c "SELECT round($jobs / extract(epoch FROM max(finished_at) - min(leased_at)))::int8
                         FROM jobs WHERE kind = '$kind'"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cat >"$work/plain.toml" <<'TOML'
[kinds."sluice.noop"]
TOML
cat >"$work/limited.toml" <<'TOML'
[kinds."sluice.noop"]
[kinds."sluice.sleep"]
global_concurrency = 2
lease_timeout = "1m"
TOML
cat >"$work/hundred.toml" <<'TOML'
[kinds."sluice.noop"]
global_concurrency = 100
TOML

alone=(); beside=()
for _ in $(seq 1 "$rounds"); do
  start_worker "$work/plain.toml"; alone+=("$(drain sluice.noop)"); stop_worker
  start_worker "$work/limited.toml"
  psql "$url" -qAt -c "DELETE FROM jobs WHERE kind = 'sluice.sleep'" \
    -c "INSERT INTO jobs (kind, payload) SELECT 'sluice.sleep', '{\"ms\": 10000}' FROM generate_series(1, 50)" >/dev/null
  beside+=("$(drain sluice.noop)")
  held=$(psql "$url" -qAt -c "SELECT count(*) FROM jobs WHERE kind = 'sluice.sleep' AND state = 'processing'")
  stop_worker
  [ "$held" -le 2 ] || { echo "global_concurrency = 2 broken: $held processing" >&2; exit 1; }
done
a=$(printf '%s\n' "${alone[@]}" | median)
b=$(printf '%s\n' "${beside[@]}" | median)
ratio=$(python3 -c "print(f'{$b / $a:.3f}')")
verdict=$(python3 -c "print('ok' if $b / $a >= 0.95 else 'MISSED')")
printf '%-46s %16s   target %-14s %s\n' "drain $jobs no-op, c=16, no limited kind" "$a/s" "" "(median of ${alone[*]})"
printf '%-46s %16s   target %-14s %s\n' "  same, beside a kind with global_concurrency=2" "$b/s" "" "(median of ${beside[*]})"
printf '%-46s %16s   target %-14s %s\n' "  ratio" "$ratio" ">= 0.95" "$verdict"

start_worker "$work/hundred.toml"
h=$(drain sluice.noop)
stop_worker
printf '%-46s %16s   target %-14s %s\n' "drain $jobs no-op with global_concurrency=100" "$h/s" "" "(report)"
