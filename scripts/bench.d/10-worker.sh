#!/usr/bin/env bash
# Worker benchmark: burn-down throughput, pickup latency, idle cost, RSS (see
# worker/examples/worker_bench.rs), in a database of its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
db="sluice_bench_worker"
admin_url="${DATABASE_URL%/*}/postgres"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" -qc "CREATE DATABASE $db" >/dev/null 2>&1
cargo build -q --release -p sluice-worker --bin sluice-worker --example worker_bench
target_dir="${CARGO_TARGET_DIR:-target}"
DATABASE_URL="${DATABASE_URL%/*}/$db" SLUICE_WORKER_BIN="$target_dir/release/sluice-worker" \
  "$target_dir/release/examples/worker_bench"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
