#!/usr/bin/env bash
# Telemetry end to end with the real binaries (tests/telemetry/telemetry_e2e.py): OTLP traces
# into a Python receiver (resource from OTEL_* variables, the job span a child of the API
# request span, route and status on server spans), promtool-clean /metrics with process_*
# and the build revision, no ERROR logs from probes during a drain, no ANSI in files.
# ~15 s. Uses the debug binaries `cargo test --workspace` just built (builds them if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! python3 -c 'from opentelemetry.proto.collector.trace.v1 import trace_service_pb2' 2>/dev/null; then
  echo "45-telemetry: pip install opentelemetry-proto protobuf"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore opentelemetry-proto protobuf
fi
exec python3 tests/telemetry/telemetry_e2e.py
