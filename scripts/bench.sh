#!/usr/bin/env bash
# `make bench`: runs every scripts/bench.d/*.sh in name order against $DATABASE_URL (the
# private Postgres by default, fsync on). Each prints its figures beside their targets,
# with ok/MISSED. 00-pgbench.sh runs first: its tps is the reference the others are
# multiples of (passed on through $BENCH_STATE/pgbench_tps).
#
# Per-statement figures (lease time, statements/WAL per job) need pg_stat_statements
# preloaded. On the private cluster (scripts/pg.sh) this script preloads it with
# ALTER SYSTEM and restarts the cluster once; on a database you bring, those figures
# fall back to pg_stat_database / pg_current_wal_lsn and say so.
#
# Sizes: BENCH_QUICK=1 shrinks every benchmark to a smoke run (about 3 minutes, figures
# meaningless); each script also reads its own size variables (see its header).
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set (make bench sets it)}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_STATE=$(mktemp -d)
export BENCH_STATE
trap 'rm -rf "$BENCH_STATE"' EXIT

if [ "${BENCH_QUICK:-0}" = 1 ]; then
  export BENCH_PGBENCH_SECS=${BENCH_PGBENCH_SECS:-3}
  export BENCH_DRAIN_JOBS=${BENCH_DRAIN_JOBS:-2000} BENCH_BACKLOG_JOBS=${BENCH_BACKLOG_JOBS:-4000}
  export BENCH_LATENCY_SECS=${BENCH_LATENCY_SECS:-3} BENCH_IDLE_SECS=${BENCH_IDLE_SECS:-5}
  export BENCH_API_SECS=${BENCH_API_SECS:-3} BENCH_FINISHED=${BENCH_FINISHED:-20000}
  export BENCH_STATS_REQUESTS=${BENCH_STATS_REQUESTS:-50}
  export BENCH_STRESS_SECS=${BENCH_STRESS_SECS:-40} BENCH_IDLE_TX_SECS=${BENCH_IDLE_TX_SECS:-10}
  export BENCH_WINDOW_SECS=${BENCH_WINDOW_SECS:-5} BENCH_STRESS_RETENTION=${BENCH_STRESS_RETENTION:-10s}
  export SLUICE_BENCH_UI_JOBS=${SLUICE_BENCH_UI_JOBS:-20000} SLUICE_BENCH_UI_SECONDS=${SLUICE_BENCH_UI_SECONDS:-2}
fi

private=$(scripts/pg.sh url 2>/dev/null || true)
preloaded=$(psql -tAq "$DATABASE_URL" -c "SHOW shared_preload_libraries")
if [[ "$preloaded" != *pg_stat_statements* ]] && [ "$DATABASE_URL" = "$private" ]; then
  echo "bench: preloading pg_stat_statements on the private cluster (ALTER SYSTEM, one restart)"
  psql -qAt "$DATABASE_URL" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
  scripts/pg.sh stop
  scripts/pg.sh start >/dev/null
  preloaded=$(psql -tAq "$DATABASE_URL" -c "SHOW shared_preload_libraries")
fi
if [[ "$preloaded" == *pg_stat_statements* ]] && [ "$DATABASE_URL" = "$private" ]; then
  # Plan time is part of the cost the issue measures (re-planning per execution).
  psql -qAt "$DATABASE_URL" -c "ALTER SYSTEM SET pg_stat_statements.track_planning = on" -c "SELECT pg_reload_conf()" >/dev/null
fi

for b in scripts/bench.d/*.sh; do
  [ -e "$b" ] || continue
  echo "== $b"
  bash "$b"
done
