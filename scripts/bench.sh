#!/usr/bin/env bash
# `make bench`: runs every scripts/bench.d/*.sh in name order against $DATABASE_URL (the
# private Postgres by default, fsync on). Each prints its figures beside their targets.
set -euo pipefail
: "${DATABASE_URL:?DATABASE_URL must be set (make bench sets it)}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for b in scripts/bench.d/*.sh; do
  [ -e "$b" ] || continue
  echo "== $b"
  bash "$b"
done
