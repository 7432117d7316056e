#!/usr/bin/env bash
# Rolling restart of both deployments under load (tests/rollout/README.md): 3 rounds,
# 0 client errors, every job delivered exactly once, clean exits. ~1 minute.
# Uses the debug binaries `cargo test --workspace` just built (builds them if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 tests/rollout/rollout.py
