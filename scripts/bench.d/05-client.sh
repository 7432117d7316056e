#!/usr/bin/env bash
# Bare job-client throughput (lease + complete), in a database of its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
db="sluice_bench_client"
admin_url="${DATABASE_URL%/*}/postgres"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" -qc "CREATE DATABASE $db" >/dev/null
cargo build -q --release -p sluice-common --example client_throughput
DATABASE_URL="${DATABASE_URL%/*}/$db" "${CARGO_TARGET_DIR:-target}/release/examples/client_throughput"
psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
