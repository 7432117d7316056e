#!/usr/bin/env bash
# Storage benchmark (worker/examples/storage_bench.rs, part `drain`; the stress run is
# 35-stress.sh), in a database of its own: drain
# with and without 2 M finished rows, GET /v1/stats with them, and a sustained-load
# stress run (clean, then with a session idle in transaction in the middle). Sizes and
# durations come from BENCH_* variables (see the example's header); run it tiny with e.g.
#   BENCH_DRAIN_JOBS=2000 BENCH_FINISHED=50000 BENCH_STRESS_SECS=30 BENCH_IDLE_TX_SECS=10 BENCH_WINDOW_SECS=5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"
db="sluice_bench_storage"
admin_url="${DATABASE_URL%/*}/postgres"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null 2>&1
cleanup() { psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cargo build -q --release -p sluice-worker --bin sluice-worker --example storage_bench
cargo build -q --release -p sluice-api --bin sluice-api
target_dir="${CARGO_TARGET_DIR:-target}"
DATABASE_URL="${DATABASE_URL%/*}/$db" BENCH_STORAGE_PART=drain SLUICE_WORKER_BIN="$target_dir/release/sluice-worker" \
  SLUICE_API_BIN="$target_dir/release/sluice-api" \
  "$target_dir/release/examples/storage_bench"
