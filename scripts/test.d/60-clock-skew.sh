#!/usr/bin/env bash
# A worker whose wall clock is 20 s off still starts a scheduled job on time: waits are
# measured by the database (worker/tests/seams.rs). Needs libfaketime (Debian package
# `faketime`), installed here if missing. ~15 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
if [ ! -e "$lib" ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq faketime >&2
  else
    echo "60-clock-skew: $lib missing; install it with: sudo apt-get install faketime" >&2
    exit 1
  fi
fi
: "${DATABASE_URL:?DATABASE_URL must be set (make test sets it)}"
exec cargo test -q -p sluice-worker --test seams -- --ignored --exact \
  a_worker_whose_clock_is_off_still_starts_a_scheduled_job_on_time
