#!/usr/bin/env bash
# Makes sure the Rust toolchain pieces `make test` uses are present. rustup components
# come with the toolchain image here; this fails with a clear message instead of a
# confusing one later.
set -euo pipefail
if ! command -v cargo >/dev/null; then
  echo "ensure-tools: cargo not found; install Rust stable (https://rustup.rs)" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  if ! cargo "$comp" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then rustup component add "$comp" >&2; else
      echo "ensure-tools: cargo $comp missing; rustup component add $comp" >&2; exit 1; fi
  fi
done
