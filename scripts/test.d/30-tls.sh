#!/usr/bin/env bash
# TLS end to end, with real parts: a Postgres cluster started here with ssl=on and a
# pg_hba.conf that accepts TLS only (`hostnossl ... reject`), a CA and server certificate
# made here with openssl (SAN localhost / 127.0.0.1), and an HTTPS target signed by the
# same CA. Checks:
#   1. `sluicectl migrate` / `status` with sslmode=verify-full + sslrootcert;
#   2. sslmode=disable is refused by the server, and the error says so;
#   3. a wrong CA is a clear error naming sslmode and sslrootcert (CLI and API readiness),
#      logged once, not once per check;
#   4. verify-full against a host name not in the certificate fails; verify-ca and
#      require+sslrootcert verify the chain;
#   5. API and worker with verify-full run a job end to end, through an https:// HTTP target
#      trusted via SSL_CERT_FILE.
# Uses its own cluster (not $DATABASE_URL): the private one has no TLS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
here=$PWD
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
PGBIN=$(scripts/pg.sh bin)

cargo build -q -p sluice-api -p sluice-worker -p sluice-cli
bin=${CARGO_TARGET_DIR:-target}/debug
ctl=$bin/sluicectl

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "30-tls: FAIL: $*" >&2; exit 1; }

# A folder the postgres user can reach wherever the checkout is (e.g. under /root).
tmp=$(mktemp -d /tmp/sluice-tls.XXXXXX)
chmod 755 "$tmp"
pids=()
as_owner() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -f "$tmp/data/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- certificates: a CA, a server certificate it signs, and an unrelated CA ----------------
cd "$tmp"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=sluice test CA" \
  -keyout ca.key -out ca.crt 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=some other CA" \
  -keyout wrong-ca.key -out wrong-ca.crt 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
  -extfile server.ext -out server.crt 2>/dev/null
chmod 644 ca.crt wrong-ca.crt server.crt
cd "$here"

# ---- the TLS-only cluster ------------------------------------------------------------------
port=$(free_port)
mkdir -p "$tmp/data"
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  chown postgres: "$tmp/data"
fi
chmod 700 "$tmp/data"
as_owner "$PGBIN/initdb" -D "$tmp/data" -U postgres --auth=trust --no-locale >/dev/null
cp "$tmp/server.crt" "$tmp/server.key" "$tmp/data/"
[ "$(id -u)" = 0 ] && chown postgres: "$tmp/data/server.crt" "$tmp/data/server.key"
chmod 600 "$tmp/data/server.key"
cat >> "$tmp/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1,127.0.0.2'
port = $port
unix_socket_directories = '$tmp/data'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
max_connections = 100
CONF
cat > "$tmp/data/pg_hba.conf" <<HBA
local     all all              trust
hostnossl all all 0.0.0.0/0    reject
hostssl   all all 127.0.0.0/8  trust
HBA
as_owner "$PGBIN/pg_ctl" -D "$tmp/data" -l "$tmp/data/server.log" -w -t 60 start >/dev/null ||
  { cat "$tmp/data/server.log"; fail "the TLS cluster did not start"; }
as_owner "$PGBIN/psql" -h "$tmp/data" -p "$port" -U postgres -d postgres -qc "CREATE DATABASE sluice_tls" >/dev/null

base="postgres://postgres@127.0.0.1:$port/sluice_tls"
good="$base?sslmode=verify-full&sslrootcert=$tmp/ca.crt"

# 1. migrate and status over verified TLS.
"$ctl" --database-url "$good" migrate >/dev/null || fail "sluicectl migrate with verify-full"
"$ctl" --database-url "postgres://postgres@localhost:$port/sluice_tls?sslmode=verify-full&sslrootcert=$tmp/ca.crt" status >/dev/null ||
  fail "sluicectl status with verify-full to localhost"
echo "30-tls: migrate and status over verify-full: ok"

# 2. no TLS: refused by the server.
if out=$("$ctl" --database-url "$base?sslmode=disable" status 2>&1); then fail "sslmode=disable was accepted: $out"; fi
grep -q "no encryption" <<<"$out" || fail "sslmode=disable: unclear error: $out"
echo "30-tls: sslmode=disable refused: ok ($out)"

# 3. wrong CA: a clear error naming the settings.
wrong="$base?sslmode=verify-full&sslrootcert=$tmp/wrong-ca.crt"
if out=$("$ctl" --database-url "$wrong" status 2>&1); then fail "a wrong CA was accepted"; fi
grep -qi "UnknownIssuer" <<<"$out" || fail "wrong CA: unclear error: $out"
grep -q "sslmode=verify-full" <<<"$out" || fail "wrong CA: the error does not name sslmode: $out"
grep -q "sslrootcert=$tmp/wrong-ca.crt" <<<"$out" || fail "wrong CA: the error does not name sslrootcert: $out"
echo "30-tls: wrong CA in sluicectl: ok ($out)"

# 4. verify-full checks the host name (127.0.0.2 is not in the SAN); verify-ca checks the
#    chain. sqlx 0.8.6 also checks the host name under verify-ca (its NoHostnameTlsVerifier
#    misses rustls >= 0.23.24's NotValidForNameContext: launchbadge/sqlx#3793, fixed for
#    0.9), so verify-ca to a name outside the SAN fails closed, with a clear error. The last
#    assertion pins that: when it flips after an sqlx upgrade, update docs and this check.
other="postgres://postgres@127.0.0.2:$port/sluice_tls"
if out=$("$ctl" --database-url "$other?sslmode=verify-full&sslrootcert=$tmp/ca.crt" status 2>&1); then
  fail "verify-full accepted a host name the certificate does not name"
fi
grep -q "not valid for name" <<<"$out" || fail "host name mismatch: unclear error: $out"
"$ctl" --database-url "$base?sslmode=verify-ca&sslrootcert=$tmp/ca.crt" status >/dev/null ||
  fail "verify-ca refused a certificate from the right CA"
if out=$("$ctl" --database-url "$base?sslmode=verify-ca&sslrootcert=$tmp/wrong-ca.crt" status 2>&1); then
  fail "verify-ca accepted a certificate from the wrong CA"
fi
grep -q "UnknownIssuer" <<<"$out" || fail "verify-ca, wrong CA: unclear error: $out"
# libpq's rule: sslmode=require with an sslrootcert verifies the chain.
if out=$("$ctl" --database-url "$base?sslmode=require&sslrootcert=$tmp/wrong-ca.crt" status 2>&1); then
  fail "sslmode=require with sslrootcert did not verify the chain"
fi
"$ctl" --database-url "$base?sslmode=require" status >/dev/null || fail "sslmode=require (no verification) failed"
if out=$("$ctl" --database-url "$other?sslmode=verify-ca&sslrootcert=$tmp/ca.crt" status 2>&1); then
  echo "30-tls: note: verify-ca now skips the host name check (sqlx fixed #3793); update the docs" >&2
  fail "verify-ca behaviour changed; see the comment above"
fi
grep -q "not valid for name" <<<"$out" || fail "verify-ca to a name outside the SAN: unclear error: $out"
echo "30-tls: verify-full / verify-ca / require+sslrootcert checks: ok"

# 3b. the API on the wrong CA: readiness says why, and the log says it once.
api_port=$(free_port); api_mport=$(free_port)
token=tls-test-admin-token-0123
DATABASE_URL="$wrong" SLUICE_API_ADDR="127.0.0.1:$api_port" SLUICE_METRICS_ADDR="127.0.0.1:$api_mport" \
  SLUICE_API_TOKENS="admin:$token" SLUICE_LOG_FORMAT=json RUST_LOG=warn \
  "$bin/sluice-api" >"$tmp/api-wrong.log" 2>&1 &
wrong_api=$!; pids+=("$wrong_api")
body=""
for _ in $(seq 1 600); do
  body=$(curl -s "http://127.0.0.1:$api_port/health/ready" || true)
  grep -q '"reason":"tls:' <<<"$body" && break
  sleep 0.05
done
grep -q '"status":"database_unavailable"' <<<"$body" || fail "wrong CA: readiness says $body"
grep -q 'UnknownIssuer' <<<"$body" || fail "wrong CA: readiness reason is unclear: $body"
grep -q 'sslrootcert=' <<<"$body" || fail "wrong CA: readiness reason does not name sslrootcert: $body"
# Let several checks (every 2 s) fail, then count the warnings: one per change, not per check.
for _ in $(seq 1 200); do
  n=$(grep -c '"status":"database_unavailable"' "$tmp/api-wrong.log" || true)
  [ "$n" -ge 1 ] && break; sleep 0.05
done
sleep 5 # observation window for "not repeated"; correctness does not depend on it
n=$(grep -c 'DATABASE_URL: TLS failed' "$tmp/api-wrong.log" || true)
[ "$n" = 1 ] || { cat "$tmp/api-wrong.log" >&2; fail "the TLS failure was logged $n times, not once"; }
kill -TERM "$wrong_api"; wait "$wrong_api" || true
echo "30-tls: API readiness on a wrong CA: ok ($body)"

# 5. a job end to end: API and worker over verify-full, an https:// target via SSL_CERT_FILE.
target_port=$(free_port)
cat > "$tmp/target.py" <<PY
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0")); self.rfile.read(n)
        with open("$tmp/target.hits", "a") as f: f.write(self.headers.get("Idempotency-Key", "") + "\n")
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", $target_port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("$tmp/server.crt", "$tmp/server.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", flush=True)
srv.serve_forever()
PY
python3 "$tmp/target.py" >"$tmp/target.log" 2>&1 &
pids+=($!)
cat > "$tmp/handlers.toml" <<TOML
[kinds."tls.echo"]
url = "https://localhost:$target_port/hook"
timeout = "10s"
max_attempts = 3
TOML
DATABASE_URL="$good" SLUICE_API_ADDR="127.0.0.1:$api_port" SLUICE_METRICS_ADDR="127.0.0.1:$api_mport" \
  SLUICE_API_TOKENS="admin:$token" SLUICE_LOG_FORMAT=json RUST_LOG=warn \
  "$bin/sluice-api" >"$tmp/api.log" 2>&1 &
pids+=($!)
worker_mport=$(free_port)
DATABASE_URL="$good" SLUICE_METRICS_ADDR="127.0.0.1:$worker_mport" SLUICE_HANDLERS_FILE="$tmp/handlers.toml" \
  SSL_CERT_FILE="$tmp/ca.crt" SLUICE_LOG_FORMAT=json RUST_LOG=warn \
  "$bin/sluice-worker" >"$tmp/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$api_port/health/ready" >/dev/null 2>&1 &&
    curl -fs "http://127.0.0.1:$worker_mport/health/ready" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -fs "http://127.0.0.1:$api_port/health/ready" >/dev/null || { cat "$tmp/api.log" >&2; fail "API never ready over verify-full"; }
curl -fs "http://127.0.0.1:$worker_mport/health/ready" >/dev/null || { cat "$tmp/worker.log" >&2; fail "worker never ready over verify-full"; }
job=$(curl -fs -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"kind":"tls.echo","payload":{"hello":"tls"}}' "http://127.0.0.1:$api_port/v1/jobs")
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$job")
state=""
for _ in $(seq 1 6); do
  state=$(curl -fs -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port/v1/jobs/$id?wait=10s" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["state"], j.get("last_error") or "")')
  case "$state" in completed*|failed*|cancelled*) break ;; esac
done
[ "${state%% *}" = completed ] || { cat "$tmp/worker.log" >&2; fail "job $id over TLS ended as: $state"; }
grep -qx "$id" "$tmp/target.hits" || fail "the https target never saw job $id"
echo "30-tls: job $id completed through API + worker over verify-full and an https target: ok"
