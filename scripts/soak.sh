#!/usr/bin/env bash
# Soak: the rollout test (tests/rollout/rollout.py) for 30 minutes, restarting one API or
# worker instance (alternating, kubelet sequence) every 30 s under steady load, then the
# same end-of-run assertions. `make soak` builds the release binaries first.
#   SOAK_SECONDS=1800 SOAK_EVERY=30 DATABASE_URL=... scripts/soak.sh [extra rollout.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?DATABASE_URL must be set (make soak sets it)}"
exec python3 tests/rollout/rollout.py \
  --bin-dir "${SLUICE_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}" \
  --soak "${SOAK_SECONDS:-1800}" --every "${SOAK_EVERY:-30}" "$@"
