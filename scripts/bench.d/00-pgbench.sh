#!/usr/bin/env bash
# The reference figure, first: `pgbench -N -c 16 -j 2 -T 10` tps on the same cluster, in a
# small database of its own (scale 1, dropped after). It is the box's durable-commit rate,
# so the other figures (printed as multiples of it where the issue asks) compare across
# machines. Written to $BENCH_STATE/pgbench_tps for the later scripts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${DATABASE_URL:?DATABASE_URL must be set}"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r | head -1)
pgbench="$pgbin/pgbench"
[ -x "$pgbench" ] || pgbench=$(command -v pgbench) || { echo "pgbench not found (it ships with the postgresql server package)" >&2; exit 1; }
db="sluice_bench_pgbench"
admin_url="${DATABASE_URL%/*}/postgres"
db_url="${DATABASE_URL%/*}/$db"
secs="${BENCH_PGBENCH_SECS:-10}"
PGOPTIONS="-c client_min_messages=warning" psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db" >/dev/null
cleanup() { psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$pgbench" -q -i -s 1 "$db_url" >/dev/null 2>&1
tps=$("$pgbench" -N -c 16 -j 2 -T "$secs" "$db_url" 2>/dev/null | awk '/^tps = / {printf "%.0f", $3; exit}')
[ -n "$tps" ] || { echo "pgbench gave no tps" >&2; exit 1; }
printf '%-46s %16s   target %-14s %s\n' "pgbench -N -c 16 -j 2 -T $secs (reference)" "$tps tps" "" "(reference)"
if [ -n "${BENCH_STATE:-}" ]; then echo "$tps" >"$BENCH_STATE/pgbench_tps"; fi
