#!/usr/bin/env bash
# Worker benchmark (worker/examples/worker_bench.rs; its header says what each figure is):
# never-analyzed drains at concurrency 16 (three repeats), 4, 64, 256; a backlog drain's
# lease time at start vs end; per-job statements, WAL and Postgres CPU; exact open-loop
# enqueue->handler start latency; idle statements/s and RSS. Fresh databases of its own,
# dropped after. Sizes: BENCH_DRAIN_JOBS (50000), BENCH_BACKLOG_JOBS (100000),
# BENCH_LATENCY_RATE (100), BENCH_LATENCY_SECS (20), BENCH_IDLE_SECS (60).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"
cargo build -q --release -p sluice-worker --bin sluice-worker --example worker_bench
target_dir="${CARGO_TARGET_DIR:-target}"
SLUICE_WORKER_BIN="$target_dir/release/sluice-worker" "$target_dir/release/examples/worker_bench"
