#!/usr/bin/env bash
# Issue 11's stress benchmark (worker/examples/storage_bench.rs, part `stress`), in a
# database of its own: sustained load at half the measured drain capacity, first clean,
# then with a session idle in transaction holding an xid in the middle; per window
# completed jobs/s, enqueue->start p50/p99, dead tuples, table size; verdicts: throughput
# within 10% of the clean run while held, back to the clean figures 30 s after, table size
# flat once the retention window is reached. Sizes:
#   BENCH_STRESS_SECS (300) per run, BENCH_IDLE_TX_SECS (120) held, BENCH_WINDOW_SECS (10),
#   BENCH_STRESS_RETENTION (1m, passed as SLUICE_RETENTION_COMPLETED), BENCH_DRAIN_JOBS
#   (20000, the capacity drain).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"
db="sluice_bench_stress"
admin_url="${DATABASE_URL%/*}/postgres"
PGOPTIONS="-c client_min_messages=warning" psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
cleanup() { psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cargo build -q --release -p sluice-worker --bin sluice-worker --example storage_bench
target_dir="${CARGO_TARGET_DIR:-target}"
DATABASE_URL="${DATABASE_URL%/*}/$db" SLUICE_WORKER_BIN="$target_dir/release/sluice-worker" \
  BENCH_STORAGE_PART=stress BENCH_DRAIN_JOBS="${BENCH_STRESS_DRAIN_JOBS:-${BENCH_DRAIN_JOBS:-20000}}" \
  "$target_dir/release/examples/storage_bench"
